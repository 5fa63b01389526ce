"""train_fr and train_fr_real stages: the one fixed FR recipe ([train_fr], METHODS.md section 5) on the
synthetic dataset and on the real aligned training faces, so the report compares training sets, not recipes.

    python -m flows train-fr          # artifacts/dataset -> artifacts/fr_synthetic
    python -m flows train-fr-real     # artifacts/align (train split) -> artifacts/fr_real
The size-matched real row's stage (train_fr_matched) is flows/train_fr_matched.py, on the same _train.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from prefect import flow

from . import ROOT
from .common import params, stage_dir
from .fr import train_and_save


def _train(stage: str, src: Path, m: pd.DataFrame, out: str, params_path: str, inputs: dict | None = None, **record) -> dict:
    """The recipe on the rows of m (key, label, shard under src); inputs and record: more for run.json."""
    shards = sorted(src / s for s in m["shard"].unique())
    return train_and_save(stage, shards, m, params(params_path)["train_fr"], stage_dir(out),
                          {"manifest": src / "manifest.parquet", **{s.name: s for s in shards}, **(inputs or {})}, **record)


@flow(name="train_fr")
def train_fr_flow(params_path: str = "params.yaml") -> dict:
    ds = ROOT / "artifacts" / "dataset"
    m = pd.read_parquet(ds / "manifest.parquet")
    if m["label"].nunique() < 2:  # the package filters left too little to train on: say which, and what to change
        counts = json.loads((ds / "counts.json").read_text())
        dropped = ", ".join(f"{r} {n}" for r, n in counts["dropped"].items() if n)
        raise ValueError(f"artifacts/dataset holds {m['label'].nunique()} identities ({len(m)} images); FR training needs at "
                         f"least 2. The package filters dropped, in images: {dropped} (artifacts/dataset/counts.json). "
                         "If the generator ignores its identity condition (python benchmarks/condition_adherence.py), "
                         "train it longer; else sample more identities (sample.num_identities) or revisit [package]")
    return _train("train_fr", ds, m, "fr_synthetic", params_path)


@flow(name="train_fr_real")
def train_fr_real_flow(params_path: str = "params.yaml") -> dict:
    align = ROOT / "artifacts" / "align"
    m = pd.read_parquet(align / "manifest.parquet")
    return _train("train_fr_real", align, m[m["split"] == "train"], "fr_real", params_path)
