"""train_fr stage: the same FR recipe as train_encoder, on the synthetic dataset's shards only.

    python -m flows train-fr          # params [train_fr]; artifacts/dataset -> artifacts/fr_synthetic
"""
from __future__ import annotations

import pandas as pd
from prefect import flow

from . import ROOT
from .common import params, stage_dir
from .fr import train_and_save


@flow(name="train_fr")
def train_fr_flow(params_path: str = "params.yaml") -> dict:
    p = params(params_path)["train_fr"]
    ds = ROOT / "artifacts" / "dataset"
    m = pd.read_parquet(ds / "manifest.parquet")
    shards = sorted(ds / s for s in m["shard"].unique())
    return train_and_save("train_fr", shards, len(m), int(m["label"].nunique()), p, stage_dir("fr_synthetic"),
                          {"manifest": ds / "manifest.parquet", **{s.name: s for s in shards}})
