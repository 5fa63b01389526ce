"""Shared pieces of the stage flows: params loading, run metadata, the task runner, device choice."""
from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import torch

from tasks.io import remove_stale_temps, write_json
from tasks.params import load_params, params_hash

from . import ROOT
from .caching import code_version, digest


def device() -> str:
    return os.environ.get("SYNTHFACE_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")


def params(path: str | Path = "params.yaml") -> dict:
    return load_params(path)


class RunRecord:
    """Collects what a stage did and writes it as run.json beside its outputs (feeds the dataset card).
    run.json holds only what the outputs depend on, so an identical rerun gives identical bytes and DVC
    does not rerun the stages after it; where and how long it ran goes to timing.json (.dvcignore'd)."""

    def __init__(self, stage: str, section: dict, out_dir: Path, inputs: dict[str, Path]):
        self.out_dir = Path(out_dir)
        self.t0 = time.time()
        self.info = {
            "stage": stage, "params": section, "params_hash": params_hash(section), "code_version": code_version(),
            "inputs": {k: digest(Path(v)) for k, v in inputs.items()}, "device": device(), "torch": torch.__version__,
        }
        self.timing = {"host": platform.node(), "threads": torch.get_num_threads(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}

    def finish(self, **results) -> dict:
        self.info.update(_without_speed(results, self.timing))
        self.timing["seconds"] = round(time.time() - self.t0, 2)
        write_json(self.out_dir / "run.json", self.info)
        write_json(self.out_dir / "timing.json", self.timing)
        return {**self.info, **self.timing}


SPEED_KEYS = ("images_per_s", "seconds")  # wall-clock figures: they vary run to run


def _without_speed(results: dict, timing: dict, path: str = "") -> dict:
    """results minus wall-clock figures at any depth; those go to `timing` under their dotted path."""
    out = {}
    for k, v in results.items():
        if k in SPEED_KEYS:
            timing[f"{path}{k}"] = v
        elif isinstance(v, dict):
            out[k] = _without_speed(v, timing, f"{path}{k}.")
        else:
            out[k] = v
    return out


def stage_dir(name: str) -> Path:
    """artifacts/<name>, created; temporary files a killed earlier run left in it are removed, so they never
    reach the stage's outputs (DVC hashes every file in the folder)."""
    d = ROOT / "artifacts" / name
    d.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(d)
    return d


def remove_unlisted(folder: Path, pattern: str, keep: set[str]) -> list[str]:
    """Delete the files matching `pattern` in a stage's folder that this run did not write (`keep`): an earlier
    run with more shards or blocks left them, and DVC would hash them as outputs."""
    gone = sorted(f.name for f in folder.glob(pattern) if f.name not in keep)
    for name in gone:
        (folder / name).unlink()
    return gone


class Progress:
    """A long stage's progress: a Prefect progress artifact (the run page's progress bar) kept current,
    and for counted work a terminal line with images/s and the ETA.

        prog = Progress("sample", total=384)
        prog.advance(16)        # 16 more images done: artifact updated, 'sample: 16/384 images, 3.1 img/s, ETA 119 s'
        prog.fraction(0.25)     # for loops that report their own rate (training)
    """

    def __init__(self, stage: str, total: int = 0, unit: str = "images"):
        from prefect.artifacts import create_progress_artifact
        self.stage, self.total, self.unit, self.done, self.t0 = stage, total, unit, 0, time.time()
        self.id = create_progress_artifact(progress=0.0, key=f"{stage.replace('_', '-')}-progress",
                                           description=f"{stage}: share of the work done")

    def fraction(self, done: float) -> None:
        from prefect.artifacts import update_progress_artifact
        update_progress_artifact(self.id, progress=round(100.0 * min(max(done, 0.0), 1.0), 2))

    def advance(self, n: int, what: str = "") -> str:
        self.done += n
        self.fraction(self.done / max(self.total, 1))
        rate = self.done / max(time.time() - self.t0, 1e-9)
        line = (f"{self.stage}: {what + ', ' if what else ''}{self.done}/{self.total} {self.unit}, {rate:.2f} img/s, "
                f"ETA {(self.total - self.done) / max(rate, 1e-9):.0f} s")
        from prefect import get_run_logger
        get_run_logger().warning(line)
        return line
