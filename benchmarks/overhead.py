"""Orchestration overhead: what DVC and Prefect cost when there is nothing (or nothing new) to compute.

    python benchmarks/overhead.py                 # ~3 min on 2 cores
    python benchmarks/overhead.py --identities 4  # smaller

In a throwaway project (benchmarks/project.py: this checkout's code, a tiny real generator) holding this
repository's own `sample` stage definition from dvc.yaml, it measures, each as seconds and as a share of
the first run:
- first run: `dvc repro` rendering every block (the stage process starts Prefect's ephemeral server);
- no-op `dvc repro` and `dvc status`: nothing changed, DVC hashes the deps and skips the stage;
- fully cached rerun: `python -m flows sample` again, every block a Prefect cache hit (ephemeral server),
  and so nothing rewritten (write_tar_if_changed);
- the same rerun connected to a running `prefect server start` (PREFECT_API_URL): the difference is the
  ephemeral server's start cost; the server's own start time is recorded too;
- `python -m flows params --dry-run`: the interpreter, imports and params validation, no Prefect run.
Writes benchmarks/results/overhead.json.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import ROOT, Bench, common_args, run_child, wait_until_idle  # noqa: E402
from benchmarks.project import make_project, run_stage, stage_env  # noqa: E402
from flows.server import prefect_server  # noqa: E402

DVC = [str(Path(sys.executable).parent / "dvc")]


def dvc_project(proj: Path) -> None:
    """Turn the tiny project into a DVC project with this repository's sample stage and .dvcignore."""
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["sample"]
    (proj / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"sample": stage}}, sort_keys=False))
    shutil.copy(ROOT / ".dvcignore", proj / ".dvcignore")
    r = run_child([*DVC, "init", "--no-scm", "--quiet"], proj, stage_env(proj))
    if r["returncode"]:
        raise RuntimeError(r["output_tail"])


def dvc(env: dict, proj: Path, *args: str) -> dict:
    r = run_child([*DVC, *args], proj, env)
    if r["returncode"]:
        raise RuntimeError(f"dvc {' '.join(args)} failed:\n{r['output_tail']}")
    return r


def measure(work: Path, sample: dict, api_url: str | None = None, log=print) -> dict:
    """The figures above; with `api_url` every stage process uses that running Prefect server (quick, for
    tests) and the ephemeral-server comparison is left out."""
    proj = make_project(work / "proj", sample=sample)
    dvc_project(proj)
    env = stage_env(proj, api_url=api_url)
    runs = {"dry_run_params": run_stage(proj, ["params", "--dry-run"], env)}
    log(f"python -m flows params --dry-run: {runs['dry_run_params']['seconds']:.1f} s")
    runs["first_dvc_repro"] = dvc(env, proj, "repro")
    log(f"first dvc repro: {runs['first_dvc_repro']['seconds']:.1f} s")
    runs["noop_dvc_repro"] = dvc(env, proj, "repro")
    runs["noop_dvc_status"] = dvc(env, proj, "status")
    if "up to date" not in runs["noop_dvc_repro"]["output_tail"] and "didn't change" not in runs["noop_dvc_repro"]["output_tail"]:
        raise RuntimeError(f"the second dvc repro was not a no-op:\n{runs['noop_dvc_repro']['output_tail']}")
    runs["cached_rerun"] = run_stage(proj, ["sample"], env)
    server_start = None
    if api_url is None:
        t0 = time.perf_counter()
        with prefect_server(work / "server") as url:
            server_start = time.perf_counter() - t0
            contact = run_stage(proj, ["sample"], stage_env(proj, api_url=url))  # first contact: the server's own warm-up
            runs["cached_rerun_server"] = run_stage(proj, ["sample"], stage_env(proj, api_url=url))
    first = runs["first_dvc_repro"]["seconds"]
    out = {k: {"seconds": r["seconds"], "share_of_first_run": r["seconds"] / first,
               "peak_rss_tree_max_mib": r["peak_rss_tree_max_mib"]} for k, r in runs.items()}
    out["prefect_api"] = "a running server (given)" if api_url else "ephemeral, started by each stage process"
    if server_start is not None:
        out["cached_rerun_server_first_contact"] = {"seconds": contact["seconds"]}
        out["prefect_server_start_seconds"] = server_start
        out["ephemeral_server_cost_seconds"] = runs["cached_rerun"]["seconds"] - runs["cached_rerun_server"]["seconds"]
    out["identities"] = sample["num_identities"]
    return out


def main(argv=None) -> int:
    ap = common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    ap.add_argument("--identities", type=int, default=8)
    ap.add_argument("--steps", type=int, default=2, help="sampling steps (the tiny generator: seconds, not minutes)")
    ap.add_argument("--keep", action="store_true", help="keep the throwaway project")
    a = ap.parse_args(argv)
    if not a.no_wait:
        wait_until_idle(a.max_load)
    b = Bench("overhead", "cpu", {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()})
    work = Path(tempfile.mkdtemp(prefix="synthface-overhead-"))
    try:
        b.result.update(measure(work, {"num_identities": a.identities, "num_inference_steps": a.steps}))
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(b.write(a.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
