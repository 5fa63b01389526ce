"""Scaling of the real sample stage: 1x, 2x, 4x identities -> wall time (should grow linearly) and memory
(should stay flat: blocks are streamed to their tars, never gathered).

    python benchmarks/scaling.py                               # 12/24/48 identities, ~5 min on 2 cores
    python benchmarks/scaling.py --base 2 --steps 2            # about a minute
    python benchmarks/scaling.py --baseline-rev REV            # also that revision's flows/tasks/models, same run

Each point is a fresh throwaway project (benchmarks/project.py: this checkout's code, a tiny real generator
at --resolution px, the [sample] guidance of this checkout's params.yaml, its own Prefect home and so its own
ephemeral server) running `python -m flows sample` as a subprocess. Per point: process wall seconds, the
flow's own seconds (artifacts/sample/timing.json), peak RSS (VmHWM) of the stage process, and what the process
still held of its sample blocks at exit (benchmarks/project.PROBE: lists of records with PNG bytes, reachable
or in uncollected cycles) as a share of the images it wrote - 1.0 means every block stayed in memory, which
at demo size is a few MB and invisible in RSS, at paper size (10k identities x 50 images) tens of GB.
Then least-squares fits against identities: seconds (slope = cost per identity, intercept = fixed cost:
interpreter, imports, Prefect server) and peak RSS (slope = MiB per identity), with r^2 and the largest
relative residual. Writes benchmarks/results/scaling.json.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import ROOT, Bench, common_args, wait_until_idle  # noqa: E402
from benchmarks.project import make_project, run_stage, stage_env  # noqa: E402
from tasks.params import load_params  # noqa: E402


def fit(x: list[float], y: list[float]) -> dict:
    """y = intercept + slope * x by least squares, with r^2 and the largest residual relative to y."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    slope, intercept = np.polyfit(x, y, 1)
    pred = intercept + slope * x
    ss = ((y - y.mean()) ** 2).sum()
    return {"slope": float(slope), "intercept": float(intercept), "r2": float(1 - ((y - pred) ** 2).sum() / ss) if ss else 1.0,
            "max_relative_residual": float(np.max(np.abs(y - pred) / y))}


def point(work: Path, identities: int, sample: dict, resolution: int, code_rev: str | None, api_url: str | None) -> dict:
    proj = make_project(work / f"ids{identities}", resolution, {**sample, "num_identities": identities}, code_rev)
    r = run_stage(proj, ["sample"], stage_env(proj, home=work / f"prefect-ids{identities}", api_url=api_url), probe=True)
    out = proj / "artifacts" / "sample"
    flow_s = json.loads((out / "timing.json").read_text())["seconds"]
    tar_mb = sum(t.stat().st_size for t in out.glob("block-*.tar")) / 1e6
    blocks = len(list(out.glob("block-*.tar")))
    images = len(pd.read_parquet(out / "plan.parquet"))
    shutil.rmtree(proj, ignore_errors=True)
    shutil.rmtree(work / f"prefect-ids{identities}", ignore_errors=True)
    return {"identities": identities, "seconds": r["seconds"], "flow_seconds": flow_s, "peak_rss_mib": r["peak_rss_mib"],
            "peak_rss_tree_max_mib": r["peak_rss_tree_max_mib"], "blocks": blocks, "tar_megabytes": tar_mb,
            "held_at_exit": r["held"], "held_share_of_images": r["held"]["records"] / images, "images": images}


def scaling(work: Path, base: int, factors=(1, 2, 4), resolution: int = 32, sample: dict | None = None,
            code_rev: str | None = None, api_url: str | None = None, log=print) -> dict:
    """Run the points and fit them; `api_url`: a running Prefect server for every point (quick, for tests)
    instead of each point's own ephemeral one."""
    pts = []
    for k in factors:
        pts.append(point(work, base * k, sample or {}, resolution, code_rev, api_url))
        log(f"{base * k} identities: {pts[-1]['seconds']:.1f} s, peak RSS {pts[-1]['peak_rss_mib']:.0f} MiB")
    ids = [p["identities"] for p in pts]
    return {"points": pts, "seconds_fit": fit(ids, [p["seconds"] for p in pts]),
            "flow_seconds_fit": fit(ids, [p["flow_seconds"] for p in pts]),
            "peak_rss_fit_mib": fit(ids, [p["peak_rss_mib"] for p in pts]),
            "seconds_per_identity": fit(ids, [p["flow_seconds"] for p in pts])["slope"],
            "peak_rss_growth": pts[-1]["peak_rss_mib"] / pts[0]["peak_rss_mib"],
            "held_share_of_images_largest": pts[-1]["held_share_of_images"]}


def main(argv=None) -> int:
    ap = common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    ap.add_argument("--base", type=int, default=12, help="identities at 1x")
    ap.add_argument("--factors", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--resolution", type=int, default=32, help="the tiny generator's image size")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--images", type=int, default=8, help="images per identity (embeddings x 2)")
    ap.add_argument("--block-size", type=int, default=4)
    ap.add_argument("--baseline-rev", help="also measure this git revision's flows/tasks/models (before a change)")
    a = ap.parse_args(argv)
    if not a.no_wait:
        wait_until_idle(a.max_load)
    guidance = {k: load_params(ROOT / "params.yaml")["sample"][k] for k in ("id_weight", "beta", "guidance_schedule")}
    sample = {"num_inference_steps": a.steps, "embeddings_per_identity": max(1, a.images // 2), "images_per_embedding": 2,
              "block_size": a.block_size, "batch_size": 16, **guidance}
    b = Bench("scaling", "cpu", {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()})
    work = Path(tempfile.mkdtemp(prefix="synthface-scaling-"))
    try:
        b.result["current"] = scaling(work, a.base, a.factors, a.resolution, sample)
        if a.baseline_rev:
            b.result["baseline"] = {"rev": a.baseline_rev, **scaling(work, a.base, a.factors, a.resolution, sample, a.baseline_rev)}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(b.write(a.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
