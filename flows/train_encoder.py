"""train_encoder stage: the identity encoder used inside the generator losses, anchor solver and filters.

    python -m flows train-encoder     # params [encoder]; artifacts/align -> artifacts/encoder

With `encoder.pretrained` naming facexlib ArcFace IR-SE50 weights, those are imported (tensors only)
instead of training; otherwise an IResNet + CosFace is trained on the real aligned training faces.
"""
from __future__ import annotations

import pandas as pd
from prefect import flow

from tasks.encoder import import_facexlib_weights, save_encoder

from . import ROOT
from .common import RunRecord, params, stage_dir
from .fr import train_and_save


@flow(name="train_encoder")
def train_encoder_flow(params_path: str = "params.yaml") -> dict:
    p = params(params_path)["encoder"]
    align = ROOT / "artifacts" / "align"
    out = stage_dir("encoder")
    if p["pretrained"]:
        weights = ROOT / p["pretrained"]
        rec = RunRecord("train_encoder", p, out, {"pretrained": weights})
        save_encoder(import_facexlib_weights(weights), {"kind": "facexlib_irse50", "source": p["pretrained"]}, out)
        return rec.finish()
    m = pd.read_parquet(align / "manifest.parquet")
    train = m[m["split"] == "train"]
    shards = sorted(align / s for s in train["shard"].unique())
    return train_and_save("train_encoder", shards, train, p, out,
                          {"manifest": align / "manifest.parquet", **{s.name: s for s in shards}})
