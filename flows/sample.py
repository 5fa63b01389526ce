"""sample stage: anchors -> identity embeddings -> images, fanned out over blocks of identities.

    python -m flows sample    # params [sample]; artifacts/{generator,encoder,align} -> artifacts/sample

Each block is a Prefect task whose cache key is the content of the generator and encoder files, the
params and the block's identities; a rerun after a crash renders only the blocks it had not finished.
Outputs: block-NNNNNN.tar (png + json + cls per image), plan.parquet, anchors.npy, embeddings.npy.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from prefect import flow, get_run_logger, task

from models.id3 import ID3Pipeline
from tasks.encoder import load_encoder
from tasks.io import write_npy, write_parquet
from tasks.sample import plan_identities, render_block
from tasks.shards import file_lock, write_tar_if_changed

from . import ROOT
from .caching import content_key
from .common import Progress, RunRecord, device, params, stage_dir

_MODELS: dict = {}


def _models(pipeline_dir: Path, encoder_dir: Path, need_encoder: bool):
    key = (str(pipeline_dir), str(encoder_dir))
    if key not in _MODELS:
        _MODELS[key] = (ID3Pipeline.from_pretrained(pipeline_dir), load_encoder(encoder_dir, device()) if need_encoder else None)
    return _MODELS[key]


@task(cache_key_fn=content_key, persist_result=True, retries=1)
def sample_block(pipeline_dir: Path, encoder_dir: Path, anchors_file: Path, embeddings_file: Path, plan_file: Path,
                 identities: list[int], p: dict) -> list[dict]:
    """Render one block; the key covers the bytes of the generator, encoder and plan files."""
    get_run_logger().warning(f"sample: rendering identities {identities[0]}-{identities[-1]}")
    pipe, enc = _models(pipeline_dir, encoder_dir, p["id_weight"] > 0)
    plan = {"anchors": np.load(anchors_file), "embeddings": np.load(embeddings_file), "rows": pd.read_parquet(plan_file).to_dict("records")}
    return render_block(pipe, enc, plan, identities, p, device())


@flow(name="sample")
def sample_flow(params_path: str = "params.yaml") -> dict:
    p = params(params_path)["sample"]
    gen, enc = ROOT / "artifacts" / "generator", ROOT / "artifacts" / "encoder"
    out = stage_dir("sample")
    rec = RunRecord("sample", p, out, {"generator": gen, "encoder": enc, "attributes": ROOT / "artifacts" / "align" / "attributes.parquet"})
    pool = pd.read_parquet(ROOT / "artifacts" / "align" / "attributes.parquet")[["yaw", "pitch", "roll"]].to_numpy()
    plan = plan_identities(dict(np.load(gen / "real_stats.npz")), p, pool)
    ids = list(range(p["num_identities"]))
    blocks = [ids[i:i + p["block_size"]] for i in range(0, len(ids), p["block_size"])]
    block_of = {i: b for b, blk in enumerate(blocks) for i in blk}
    # the plan is written first: blocks read it, and their cache keys hash its bytes
    write_npy(out / "anchors.npy", plan["anchors"])
    write_npy(out / "embeddings.npy", plan["embeddings"])
    write_parquet(out / "plan.parquet", pd.DataFrame([{**r, "block": f"block-{block_of[r['identity']]:06d}.tar"} for r in plan["rows"]]))
    prog = Progress("sample", total=len(plan["rows"]))
    for b, block in enumerate(blocks):
        tar = out / f"block-{b:06d}.tar"
        # runs that overlap in this folder take turns per block: the first renders and writes it, the next
        # finds its result cached and the same bytes on disk (a kill releases the lock with the process)
        with file_lock(tar):
            samples = sample_block(gen / "pipeline", enc, out / "anchors.npy", out / "embeddings.npy", out / "plan.parquet", block, p)
            wrote = write_tar_if_changed(tar, [{"__key__": s["key"], "png": s["png"], "cls": s["identity"],
                                                "json": {k: v for k, v in s.items() if k not in ("png", "key", "block")}}
                                               for s in samples])
        prog.advance(len(samples), f"block {b + 1}/{len(blocks)} {'written' if wrote else 'already on disk'}")
    return rec.finish(images=len(plan["rows"]), blocks=len(blocks), anchor_stats=plan["anchor_stats"])
