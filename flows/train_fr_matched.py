"""train_fr_matched stage: the one fixed FR recipe ([train_fr]) on a subset of the real training faces the size
of the packaged synthetic set - as many identities, as many images, the same images per identity
(tasks/matched.py) - so the report compares real and synthetic data at equal size, not 2,650 faces with 48.

    python -m flows train-fr-matched   # artifacts/align (train split) + artifacts/dataset (its manifest's
                                       #   per-identity counts) -> artifacts/fr_real_matched

The subset is drawn with train_fr.seed. Where the real split cannot match (fewer identities, or none with
enough images), it trains on the closest subset, and run.json's `size_match` records the target, what was
selected and the shortfall; the report marks the row.
"""
from __future__ import annotations

import pandas as pd
from prefect import flow, get_run_logger

from tasks.matched import size_matched_subset

from . import ROOT
from .common import params
from .train_fr import _train


@flow(name="train_fr_matched")
def train_fr_matched_flow(params_path: str = "params.yaml") -> dict:
    art = ROOT / "artifacts"
    align = art / "align"
    synthetic = pd.read_parquet(art / "dataset" / "manifest.parquet")
    real = pd.read_parquet(align / "manifest.parquet")
    real = real[real["split"] == "train"]
    subset, record = size_matched_subset(real, synthetic.groupby("label").size(), params(params_path)["train_fr"]["seed"])
    if not record["matched"]:
        get_run_logger().warning(f"train_fr_matched: the real training split cannot match the synthetic set's size: "
                                 f"{record['shortfall']} short of {record['target']} (recorded in run.json)")
    return _train("train_fr_matched", align, subset, "fr_real_matched", params_path,
                  {"synthetic_manifest": art / "dataset" / "manifest.parquet"}, size_match=record)
