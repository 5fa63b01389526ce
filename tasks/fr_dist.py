"""Multi-process FR training: tasks/fr_train.py's recipe under torchrun (NCCL on GPUs, gloo on CPU).

The launcher writes the job (shards, train/val splits, params) to <job>/inputs.json and runs

    python -m torch.distributed.run --nproc-per-node N --nnodes M (--standalone | --rdzv-backend c10d
        --rdzv-endpoint HOST:PORT) -m tasks.fr_dist <job>

Every rank trains; rank 0's chosen weights go to <job>/out/model.safetensors and its stats to
<job>/out/stats.json (written by each node's local rank 0, so every node ends with them). Without
torchrun, `python -m tasks.fr_dist <job>` trains in one process, the same as train_fr.

    state, stats = launch(shards, train, val, p, "cuda", job_dir, log=print, checkpoint_dir=ckpt)
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import deque
from datetime import timedelta
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from .fr_train import train_fr
from .io import atomic_path, write_json

ROOT = Path(__file__).resolve().parent.parent


def world_size(p: dict) -> int:
    d = p["distributed"]
    return d["nproc_per_node"] * d["nnodes"]


def torchrun_command(p: dict, job: Path) -> list[str]:
    d = p["distributed"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(d["nproc_per_node"]),
           "--nnodes", str(d["nnodes"])]
    # one node: a free local port (--standalone), so concurrent runs on a machine do not collide
    cmd += ["--rdzv-backend", "c10d", "--rdzv-endpoint", d["rdzv_endpoint"]] if d["rdzv_endpoint"] else ["--standalone"]
    return cmd + ["-m", "tasks.fr_dist", str(job)]


def write_job(job: Path, shards: list[Path], train: dict[str, int], val: dict[str, int], p: dict, device: str,
              checkpoint_dir: Path | None = None) -> None:
    write_json(Path(job) / "inputs.json", {"shards": [str(s) for s in shards], "train": train, "val": val, "p": p, "device": device,
                                           "checkpoint_dir": str(checkpoint_dir) if checkpoint_dir else None})


def launch(shards: list[Path], train: dict[str, int], val: dict[str, int], p: dict, device: str, job: Path,
           log: Callable[[str], None] = print, checkpoint_dir: Path | None = None,
           progress: Callable[[float], None] | None = None) -> tuple[dict, dict]:
    """Run the job under torchrun, streaming its output lines to `log`; return (state dict, stats)."""
    job = Path(job)
    write_job(job, shards, train, val, p, device, checkpoint_dir)
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    proc = subprocess.Popen(torchrun_command(p, job), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1)
    tail = deque(maxlen=80)  # the rank traceback comes before torchrun's own ~25-line summary
    for line in proc.stdout:
        line = line.rstrip()
        tail.append(line)
        if line:
            log(line)
        m = re.search(r"epoch (\d+)/(\d+) ", line)
        if m and progress is not None:
            progress(int(m[1]) / int(m[2]))
    if proc.wait():
        raise RuntimeError(f"distributed FR training (torchrun) exited with status {proc.returncode}; its last lines:\n"
                           + "\n".join(tail))
    out = job / "out"
    return load_file(str(out / "model.safetensors")), json.loads((out / "stats.json").read_text())


def main(job: Path) -> None:
    job = Path(job)
    inp = json.loads((job / "inputs.json").read_text())
    device, world = inp["device"], int(os.environ.get("WORLD_SIZE", 1))
    rank, local_rank = int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0))
    if world > 1:
        cuda = device.startswith("cuda") and torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(local_rank)  # before NCCL starts: each rank on its own GPU
        # validation and checkpoint writing on rank 0 keep the others at a barrier: allow them time
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(hours=2))
        device = f"cuda:{local_rank}" if cuda else "cpu"

    def log(line: str) -> None:
        print(line if world == 1 else f"[rank {rank}] {line}", flush=True)

    try:
        model, stats = train_fr([Path(s) for s in inp["shards"]], inp["train"], inp["val"], inp["p"], device, log,
                                checkpoint_dir=Path(inp["checkpoint_dir"]) if inp["checkpoint_dir"] else None)
        if local_rank == 0:
            state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
            with atomic_path(job / "out" / "model.safetensors") as tmp:
                save_file(state, str(tmp))
            write_json(job / "out" / "stats.json", stats)
    finally:
        if world > 1:
            dist.destroy_process_group()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m tasks.fr_dist <job folder holding inputs.json>")
    main(Path(sys.argv[1]))
