"""sample stage: anchors -> identity embeddings -> images, fanned out over blocks of identities, with the
generator artifacts/generator holds (ID3, CemiFace or ID-Booth: tasks/sample.py).

    python -m flows sample    # params [sample]; artifacts/{generator,encoder,align} -> artifacts/sample

    python -m flows sample --runner dask --address tcp://scheduler:8786    # blocks on a Dask cluster

Each block is a Prefect task whose cache key is the content of the generator and encoder files, the
params and the block's identities; a rerun after a crash renders only the blocks it had not finished.
The blocks run on the [execution] task runner (threads or Dask: flows/runners.py); the flow writes
each block's tar as its result comes back, so the bytes do not depend on where or in which order blocks ran.
Outputs: block-NNNNNN.tar (png + json + cls per image), plan.parquet, anchors.npy, embeddings.npy.
"""
from __future__ import annotations

import contextlib
import gc
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from prefect import flow, get_run_logger
from prefect.context import FlowRunContext
from prefect.futures import as_completed

from models import load_pipeline, pipeline_class
from models.idbooth import bank_labels
from models.identities import attribute_pool
from tasks.align import MTCNNDetector, align_generated
from tasks.encoder import load_encoder
from tasks.io import write_npy, write_parquet
from tasks.sample import plan_identities, render_block, sampling
from tasks.shards import file_lock, write_tar_if_changed

from . import ROOT
from .caching import cached_task
from .common import Progress, RunRecord, params, remove_unlisted, stage_dir
from .runners import check_cluster, gpu_slots, in_flight, task_device, task_runner

_MODELS: dict = {}


def _models(pipeline_dir: Path, encoder_dir: Path, p: dict, dev: str):
    """(pipeline, encoder or None, aligner or None), loaded once per worker process and device: the pipeline's
    class is the method, which says whether guidance needs the encoder and whether outputs are aligned."""
    key = (str(pipeline_dir), str(encoder_dir), dev)
    if key not in _MODELS:
        pipe = load_pipeline(pipeline_dir)
        enc = load_encoder(encoder_dir, dev) if sampling(p, pipe.METHOD)["id_weight"] > 0 else None
        aligner = None
        if pipe.METHOD == "idbooth" and p["idbooth"]["align"]:  # the aligner of the real data (MTCNN, ArcFace template)
            det = MTCNNDetector(dev)
            aligner = lambda ims: align_generated(ims, det, p["idbooth"]["align_min_score"])  # noqa: E731
        _MODELS[key] = (pipe, enc, aligner)
    return _MODELS[key]


# cache_result_in_memory=False: Prefect's result store otherwise keeps every finished block's images in an
# in-memory LRU cache of 1000 records for the whole run (benchmarks/scaling.py); the flow reads each result once
@cached_task(retries=1, cache_result_in_memory=False)
def sample_block(pipeline_dir: Path, encoder_dir: Path, anchors_file: Path, embeddings_file: Path, plan_file: Path,
                 identities: list[int], p: dict) -> list[dict]:
    """Render one block; the key covers the bytes of the generator, encoder and plan files."""
    # one intra-op thread count on every runner: CPU kernels order their sums by it (a Dask worker starts with one
    # thread, a threads-runner process with all cores), so a block's PNG bytes do not depend on where it ran
    torch.set_num_threads(os.cpu_count() or 1)
    with task_device() as dev:
        get_run_logger().warning(f"sample: rendering identities {identities[0]}-{identities[-1]} (pid {os.getpid()}, {dev})")
        pipe, enc, aligner = _models(pipeline_dir, encoder_dir, p, dev)
        plan = {"anchors": np.load(anchors_file), "embeddings": np.load(embeddings_file), "rows": pd.read_parquet(plan_file).to_dict("records")}
        return render_block(pipe, enc, plan, identities, p, dev, aligner)


def sample_flow(params_path: str = "params.yaml", runner: str | None = None, address: str | None = None) -> dict:
    """The sample stage on the [execution] task runner, or on `runner` / `address` when given."""
    ex = params(params_path)["execution"]
    if runner:
        ex = {**ex, "runner": runner}
    if address:
        ex = {**ex, "address": address}
    return _sample.with_options(task_runner=task_runner(ex))(params_path, ex)


@flow(name="sample")
def _sample(params_path: str, ex: dict) -> dict:
    p = params(params_path)["sample"]
    gen, enc = ROOT / "artifacts" / "generator", ROOT / "artifacts" / "encoder"
    out = stage_dir("sample")
    rec = RunRecord("sample", p, out, {"generator": gen, "encoder": enc, "attributes": ROOT / "artifacts" / "align" / "attributes.parquet"})
    pool = attribute_pool(pd.read_parquet(ROOT / "artifacts" / "align" / "attributes.parquet"))
    method = pipeline_class(gen / "pipeline").METHOD  # the generator says which method's plan it renders
    real = dict(np.load(gen / "real_stats.npz"))
    if method == "idbooth":  # its identities are the real ones it holds a LoRA for
        real["personalised"] = bank_labels(gen / "pipeline")
        if len(real["personalised"]) < p["num_identities"]:
            get_run_logger().warning(f"sample: the ID-Booth generator personalised {len(real['personalised'])} identities; "
                                     f"rendering those, not sample.num_identities = {p['num_identities']}")
    plan = plan_identities(real, p, pool, method)
    ids = sorted({r["identity"] for r in plan["rows"]})
    blocks = [ids[i:i + p["block_size"]] for i in range(0, len(ids), p["block_size"])]
    block_of = {i: b for b, blk in enumerate(blocks) for i in blk}
    # the plan is written first: blocks read it, and their cache keys hash its bytes
    write_npy(out / "anchors.npy", plan["anchors"])
    write_npy(out / "embeddings.npy", plan["embeddings"])
    write_parquet(out / "plan.parquet", pd.DataFrame([{**r, "block": f"block-{block_of[r['identity']]:06d}.tar"} for r in plan["rows"]]))
    runner = FlowRunContext.get().task_runner
    if ex["runner"] == "dask" and ex["address"]:
        check_cluster(ex, runner.client)
    window = in_flight(ex, runner)
    prog = Progress("sample", total=len(plan["rows"]))
    pending: dict = {}  # future -> (block index, the ExitStack holding its lock)
    gc.freeze()  # what is alive now lives through the run: the per-block collections below need not scan it
    try:
        for b, block in enumerate(blocks):
            # runs that overlap in this folder take turns per block: the first renders and writes it, the next
            # finds its result cached and the same bytes on disk (a kill releases the lock with the process).
            # Locks are taken in block order, so two runs never wait on each other in a cycle.
            lock = contextlib.ExitStack()
            lock.enter_context(file_lock(out / f"block-{b:06d}.tar"))
            with gpu_slots(ex):
                fut = sample_block.submit(gen / "pipeline", enc, out / "anchors.npy", out / "embeddings.npy",
                                          out / "plan.parquet", block, p)
            pending[fut] = (b, lock)
            while len(pending) >= window or (b == len(blocks) - 1 and pending):
                fut = next(as_completed(list(pending)))
                i, lock = pending.pop(fut)
                with lock:
                    _write_block(out / f"block-{i:06d}.tar", fut.result(), prog, i, len(blocks))
                # a finished future and its state still hold the block's images in reference cycles (Prefect's
                # future <-> its done-callback, transaction <-> result record): free them now, not at the next
                # full collection, which a run's few thousand new objects per block seldom triggers
                fut = None
                gc.collect()
    finally:
        gc.unfreeze()
        for _, lock in pending.values():
            lock.close()
    remove_unlisted(out, "block-*.tar", {f"block-{i:06d}.tar" for i in range(len(blocks))})
    return rec.finish(method=method, images=len(plan["rows"]), blocks=len(blocks), anchor_stats=plan["anchor_stats"])


def _write_block(tar: Path, samples: list[dict], prog: Progress, b: int, n: int) -> None:
    wrote = write_tar_if_changed(tar, [{"__key__": s["key"], "png": s["png"], "cls": s["identity"],
                                        "json": {k: v for k, v in s.items() if k not in ("png", "key", "block")}}
                                       for s in samples])
    prog.advance(len(samples), f"block {b + 1}/{n} {'written' if wrote else 'already on disk'}")
