"""The FR-training flow body shared by train_encoder (real faces) and train_fr (synthetic shards)."""
from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task

from tasks.encoder import save_encoder
from tasks.fr_train import train_fr

from .caching import content_key
from .common import RunRecord, device


@task(cache_key_fn=content_key, persist_result=True)
def fr_training(shards: list[Path], num_samples: int, num_classes: int, p: dict) -> tuple[dict, dict]:
    log = get_run_logger()
    model, stats = train_fr(shards, num_samples, num_classes, p, device(), log.warning)
    return {k: v.cpu() for k, v in model.state_dict().items()}, stats


def train_and_save(stage: str, shards: list[Path], num_samples: int, num_classes: int, p: dict, out: Path,
                   inputs: dict[str, Path]) -> dict:
    rec = RunRecord(stage, p, out, inputs)
    from tasks.encoder import build
    config = {"kind": "iresnet", "arch": p["arch"], "num_classes": num_classes, "num_samples": num_samples}
    state, stats = fr_training(shards, num_samples, num_classes, p)
    model = build(config)
    model.load_state_dict(state)
    save_encoder(model, config, out)
    return rec.finish(training=stats)
