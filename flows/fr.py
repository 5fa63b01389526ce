"""The FR-training flow body shared by train_encoder (identity encoder), train_fr_real (real-data
baseline), train_fr_matched (its size-matched subset) and train_fr (synthetic shards): split off validation
identities, train, save the chosen checkpoint.

Training checkpoints every epoch to CHECKPOINTS/<stage>-<content key> (flows/__init__.py), so a killed stage
resumes where it stopped; the folder goes once the stage's outputs are written. With
`distributed.nproc_per_node * distributed.nnodes > 1` the training runs under torchrun (tasks/fr_dist.py).
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pandas as pd
from prefect import get_run_logger

from tasks.encoder import build, save_encoder
from tasks.fr_dist import launch, world_size
from tasks.fr_train import train_fr, validation_split

from . import CHECKPOINTS
from .caching import cached_task, content_key
from .common import Progress, RunRecord, device


def checkpoint_dir(stage: str, shards: list[Path], train: dict[str, int], val: dict[str, int], p: dict) -> Path:
    """One folder per (stage, code, shard bytes, splits, params): a changed input never resumes a stale run."""
    key = content_key(None, {"stage": stage, "shards": shards, "train": train, "val": val, "p": p})
    return CHECKPOINTS / f"{stage}-{key[:16]}"


@cached_task()
def fr_training(stage: str, shards: list[Path], train: dict[str, int], val: dict[str, int], p: dict) -> tuple[dict, dict]:
    log = get_run_logger()
    ckpt = checkpoint_dir(stage, shards, train, val, p)
    progress = Progress("fr_training").fraction
    if world_size(p) > 1:
        with tempfile.TemporaryDirectory(prefix=f"{stage}-torchrun-") as job:
            return launch(shards, train, val, p, device(), Path(job), log.warning, ckpt, progress)
    model, stats = train_fr(shards, train, val, p, device(), log.warning, progress, checkpoint_dir=ckpt)
    return {k: v.cpu() for k, v in model.state_dict().items()}, stats


def train_and_save(stage: str, shards: list[Path], manifest: pd.DataFrame, p: dict, out: Path, inputs: dict[str, Path],
                   **record) -> dict:
    """manifest: one row per training image with `key` and `label`; record: more results for run.json."""
    rec = RunRecord(stage, p, out, inputs)
    train, val = validation_split(manifest, p["val_fraction"], p["seed"])
    num_classes = len(set(train.values()))
    config = {"kind": "iresnet", "arch": p["arch"], "num_classes": num_classes, "num_samples": len(train)}
    state, stats = fr_training(stage, shards, train, val, p)
    model = build(config)
    model.load_state_dict(state)
    save_encoder(model, config, out)
    result = rec.finish(training=stats, **record)
    shutil.rmtree(checkpoint_dir(stage, shards, train, val, p), ignore_errors=True)  # the outputs hold what it did
    return result
