"""package stage: sampled blocks -> filtered WebDataset shards + parquet manifest + dataset card.

    python -m flows package   # params [package]; artifacts/{sample,encoder} -> artifacts/dataset

Filter (now): identity consistency by the encoder (cosine of each image to its identity centre below
package.min_consistency is dropped; counts per reason are recorded). Shards hold png/cls/json
members with deterministic bytes; shards.json and the manifest carry per-shard sha256 and counts.
"""
from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
from PIL import Image
from prefect import flow, get_run_logger

from tasks.card import write_card
from tasks.encoder import embed, load_encoder
from tasks.shards import decode_image
from tasks.identity import cos_to_centre
from tasks.io import write_json, write_parquet
from tasks.shards import read_tar, write_shards

from . import ROOT
from .common import RunRecord, device, params, stage_dir


@flow(name="package")
def package_flow(params_path: str = "params.yaml") -> dict:
    log = get_run_logger()
    allp = params(params_path)
    p = allp["package"]
    smp, enc_dir = ROOT / "artifacts" / "sample", ROOT / "artifacts" / "encoder"
    out = stage_dir("dataset")
    blocks = sorted(smp.glob("block-*.tar"))
    rec = RunRecord("package", p, out, {"sample": smp, "encoder": enc_dir})
    samples = [s for b in blocks for s in read_tar(b)]
    meta = [json.loads(s["json"]) | {"key": s["__key__"]} for s in samples]
    images = np.stack([decode_image(s["png"]) for s in samples])
    ident = np.array([m["identity"] for m in meta])
    cons = cos_to_centre(embed(load_encoder(enc_dir, device()), images), ident)
    keep = cons >= p["min_consistency"]
    kept_ids = sorted(set(ident[keep].tolist()))
    label = {i: n for n, i in enumerate(kept_ids)}
    ext = p["image_format"]
    chosen = [i for i in range(len(samples)) if keep[i]]

    def encode(i):
        if ext == "png":
            return samples[i]["png"]
        buf = io.BytesIO()
        Image.fromarray(images[i]).save(buf, format="JPEG", quality=95)
        return buf.getvalue()

    records = [{"__key__": meta[i]["key"], ext: encode(i), "cls": label[ident[i]],
                "json": {**meta[i], "label": label[ident[i]], "consistency": round(float(cons[i]), 6)}} for i in chosen]
    shards = write_shards(records, out, "synthface", p["shard_size"])
    shard_names = [s["shard"] for s in shards for _ in range(s["count"])]
    manifest = pd.DataFrame([{**r["json"], "shard": sh} for r, sh in zip(records, shard_names)])
    write_parquet(out / "manifest.parquet", manifest)
    write_json(out / "shards.json", shards)
    counts = {"images_in": len(samples), "images_out": len(records), "identities_out": len(kept_ids),
              "dropped": {"low_consistency": int((~keep).sum())}, "mean_consistency": float(cons[keep].mean()) if keep.any() else None}
    write_json(out / "counts.json", counts)
    runs = {n: json.loads((ROOT / "artifacts" / d / "run.json").read_text())
            for n, d in [("align", "align"), ("encoder", "encoder"), ("generator", "generator"), ("sample", "sample")]
            if (ROOT / "artifacts" / d / "run.json").exists()}
    write_card(out / "README.md", counts, shards, runs, allp)
    log.warning(f"package: {counts}")
    return rec.finish(counts=counts)
