"""The FR-training flow body shared by train_encoder (identity encoder), train_fr_real (real-data
baseline) and train_fr (synthetic shards): split off validation identities, train, save the chosen checkpoint."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
from prefect import get_run_logger, task

from tasks.encoder import build, save_encoder
from tasks.fr_train import train_fr, validation_split

from .caching import content_key
from .common import Progress, RunRecord, device


@task(cache_key_fn=content_key, persist_result=True)
def fr_training(shards: list[Path], train: dict[str, int], val: dict[str, int], p: dict) -> tuple[dict, dict]:
    log = get_run_logger()
    model, stats = train_fr(shards, train, val, p, device(), log.warning, Progress("fr_training").fraction)
    return {k: v.cpu() for k, v in model.state_dict().items()}, stats


def train_and_save(stage: str, shards: list[Path], manifest: pd.DataFrame, p: dict, out: Path, inputs: dict[str, Path]) -> dict:
    """manifest: one row per training image with `key` and `label`."""
    rec = RunRecord(stage, p, out, inputs)
    train, val = validation_split(manifest, p["val_fraction"], p["seed"])
    num_classes = len(set(train.values()))
    config = {"kind": "iresnet", "arch": p["arch"], "num_classes": num_classes, "num_samples": len(train)}
    state, stats = fr_training(shards, train, val, p)
    model = build(config)
    model.load_state_dict(state)
    save_encoder(model, config, out)
    return rec.finish(training=stats)
