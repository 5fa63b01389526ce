"""A tiny, real sampling project for the orchestration benchmarks (overhead.py, scaling.py): this checkout's
flows/, tasks/, models/ and params.yaml with a tiny generator, encoder and attribute pool (the tests' own
tests/conftest.tiny_sampling_project), its stages run as subprocesses (`python -m flows ...`) with their own
Prefect home, optionally connected to a running Prefect server
(flows/server.prefect_server).

    proj = make_project(tmp / "p", resolution=16, sample={"num_identities": 8})
    r = run_stage(proj, ["sample"], stage_env(proj, home=tmp / "prefect"))    # common.run_child's result
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from io import BytesIO
from pathlib import Path

import yaml

from benchmarks.common import ROOT, run_child

sys.path.insert(0, str(ROOT / "tests"))
from conftest import tiny_sampling_project  # noqa: E402
from flows.server import without_prefect  # noqa: E402


def make_project(proj: Path, resolution: int = 16, sample: dict | None = None, code_rev: str | None = None) -> Path:
    """Build the tiny project; `sample` overrides its [sample] params; `code_rev` (a git revision of this
    checkout) replaces its flows/, tasks/ and models/ with that revision's, to measure code before a change."""
    tiny_sampling_project(proj, resolution)
    if code_rev:
        blob = subprocess.run(["git", "archive", code_rev, "flows", "tasks", "models"], cwd=ROOT, check=True,
                              capture_output=True).stdout
        with tarfile.open(fileobj=BytesIO(blob)) as tar:
            tar.extractall(proj, filter="data")
    p = yaml.safe_load((proj / "params.yaml").read_text())
    p["sample"].update(sample or {})
    (proj / "params.yaml").write_text(yaml.safe_dump(p))
    return proj


def stage_env(proj: Path, home: Path | None = None, api_url: str | None = None) -> dict:
    """Environment for the project's stage processes: none of this process's Prefect settings, the project's
    code first on the path, Prefect home `home` (default: the project's .prefect), a server URL if given."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"  # `python`, `dvc` of this venv
    env = {**without_prefect(os.environ), "PYTHONPATH": str(proj), "PATH": path}
    if home is not None:
        env["SYNTHFACE_PREFECT_HOME"] = str(home)
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


# `python -m flows ARGS`, then at exit (before any final collection) what the process still holds of its sample
# blocks - lists of records with "png" bytes - reachable or in uncollected reference cycles: none when streaming
PROBE = """
import atexit, gc, json, runpy, sys
def _held():
    blocks = [o for o in gc.get_objects() if type(o) is list and o and type(o[0]) is dict and isinstance(o[0].get("png"), bytes)]
    print("HELD " + json.dumps({"blocks": len(blocks), "records": sum(map(len, blocks)),
                                "png_bytes": sum(len(r["png"]) for b in blocks for r in b)}), flush=True)
atexit.register(_held)
sys.argv = ["flows", *sys.argv[1:]]
runpy.run_module("flows", run_name="__main__", alter_sys=True)
"""


def run_stage(proj: Path, args: list[str], env: dict, probe: bool = False) -> dict:
    """Run `python -m flows ARGS` (run_child's figures); with `probe`, also the sample records it still held
    at exit ("held")."""
    r = run_child([sys.executable, *(["-c", PROBE] if probe else ["-m", "flows"]), *args], proj, env)
    if r["returncode"] != 0:
        raise RuntimeError(f"python -m flows {' '.join(args)} failed in {proj}:\n{r['output_tail']}")
    if probe:
        held = [ln for ln in r["output_tail"].splitlines() if ln.startswith("HELD ")]
        r["held"] = json.loads(held[-1][5:]) if held else None
    return r
