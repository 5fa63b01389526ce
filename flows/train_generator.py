"""train_generator stage: the diffusion generator of generator.method (id3 | cemiface | idbooth).

    python -m flows train-generator   # params [generator]; artifacts/{align,encoder} -> artifacts/generator

Writes artifacts/generator/pipeline (diffusers format: `models.load_pipeline`) and
real_stats.npz (the encoder's embeddings, labels and keys of the real training faces, for anchors).
Conditioning attributes come from the align stage's pool, artifacts/align/attributes.parquet.
Files over 64 MiB (an ID-Booth base model's frozen weights) are cached in BLOBS by sha256, not inside the task
result. Checkpoints go to CHECKPOINTS/train_generator-<content key> (flows/__init__.py; never a stage output, so
switching between experiments leaves the stage's outputs as DVC cached them), so a killed run resumes;
the folder is removed once the outputs are written.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from prefect import flow, get_run_logger

from tasks.encoder import load_encoder
from tasks.io import atomic_path
from tasks.train_generator import (attribute_conditions, missing_blobs, pipeline_files, real_embeddings, train_generator,
                                   write_pipeline)

from . import BLOBS, CHECKPOINTS, ROOT
from .caching import cached_task, content_key
from .common import Progress, RunRecord, device, params, stage_dir


def checkpoint_dir(shards: list, encoder_dir, attributes, p: dict) -> Path:
    """One folder per (code, inputs, params): a changed input or method never resumes a stale run."""
    key = content_key(None, {"shards": list(shards), "encoder": encoder_dir, "attributes": attributes, "p": p})
    return CHECKPOINTS / f"train_generator-{key[:16]}"


@cached_task()
def train_generator_task(shards: list, encoder_dir, attributes, p: dict) -> tuple[dict, dict, dict, dict]:
    log = get_run_logger()
    dev = device()
    enc = load_encoder(encoder_dir, dev)
    pool = pd.read_parquet(attributes)
    keys, labels, embs = real_embeddings(enc, shards, p["resolution"], dev)
    emb_of = dict(zip(keys, embs))
    attr_of = attribute_conditions(pool)
    fingerprint = content_key(None, {"shards": list(shards), "encoder": encoder_dir, "attributes": attributes})
    pipe, stats = train_generator(shards, emb_of, attr_of, len(pool), enc, p, checkpoint_dir(shards, encoder_dir, attributes, p),
                                  dev, log.warning, fingerprint, Progress("train_generator").fraction)
    real = {"embeddings": embs, "labels": labels, "keys": np.array(keys)}
    sizes = {n: sum(x.numel() for x in m.parameters()) for n, m in pipe.components.items() if hasattr(m, "parameters")}
    return pipeline_files(pipe, BLOBS), real, stats, sizes


@flow(name="train_generator")
def train_generator_flow(params_path: str = "params.yaml") -> dict:
    p = params(params_path)["generator"]
    align, enc_dir = ROOT / "artifacts" / "align", ROOT / "artifacts" / "encoder"
    out = stage_dir("generator")
    m = pd.read_parquet(align / "manifest.parquet")
    shards = sorted(align / s for s in m[m["split"] == "train"]["shard"].unique())
    rec = RunRecord("train_generator", p, out, {"attributes": align / "attributes.parquet", "encoder": enc_dir,
                                                **{s.name: s for s in shards}})
    args = (shards, enc_dir, align / "attributes.parquet", p)
    files, real, stats, sizes = train_generator_task(*args)
    gone = missing_blobs(files, BLOBS)
    if gone:  # a cached result whose large files were pruned from the Prefect home
        get_run_logger().warning(f"train_generator: {gone} gone from {BLOBS}: training again")
        files, real, stats, sizes = train_generator_task.with_options(refresh_cache=True)(*args)
    for stale in sorted((out / "pipeline").rglob("*"), reverse=True):  # another method's components (files, then folders)
        if stale.is_file() and stale.relative_to(out / "pipeline").as_posix() not in files:
            stale.unlink()
        elif stale.is_dir() and not any(stale.iterdir()):
            stale.rmdir()
    write_pipeline(files, out / "pipeline", BLOBS)
    with atomic_path(out / "real_stats.npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **real)
    shutil.rmtree(checkpoint_dir(shards, enc_dir, align / "attributes.parquet", p), ignore_errors=True)  # the outputs hold it
    return rec.finish(method=p["method"], training=stats, num_parameters=sizes)
