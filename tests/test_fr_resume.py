"""FR training killed with SIGKILL and run again resumes from its last epoch checkpoint and ends with exactly
the weights, optimizer and RNG states and history of an uninterrupted run; a checkpoint of another run is ignored."""
import json
import os
import re
import signal
import subprocess
import sys

import torch
from safetensors.torch import load_file

from tasks.fr_dist import write_job
from tasks.fr_train import CHECKPOINT, train_fr, validation_split
from tasks.shards import write_shards

from conftest import ROOT, colour_faces

P = {"arch": {"layers": [1, 1], "widths": [8, 16], "input_size": 32, "embedding_dim": 16},
     "margin": {"kind": "cosface", "s": 16.0, "m": 0.2}, "epochs": 5, "batch_size": 8, "lr": 0.05, "momentum": 0.9,
     "weight_decay": 5e-4, "milestones": [3], "warmup_steps": 2,
     "augment": {"flip": True, "crop_scale": 0.9, "erase_p": 0.1, "jitter": 0.1}, "seed": 0, "num_workers": 0,
     "val_fraction": 0.25, "val_max_pairs": 200, "val_every": 1}
# one thread in every run: CPU kernels may sum in another order with another thread count
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def _run(job):
    return [sys.executable, "-m", "tasks.fr_dist", str(job)]


def _assert_same(a, b, where=""):
    """Every tensor equal, every other value equal, at any depth."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert sorted(a) == sorted(b), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def test_sigkilled_training_resumes_to_the_uninterrupted_result(tmp_path):
    samples, manifest = colour_faces(8, 6)
    shards = [tmp_path / s["shard"] for s in write_shards(samples, tmp_path, "t", 20)]
    train, val = validation_split(manifest, P["val_fraction"], P["seed"])
    for name in ("whole", "killed"):
        write_job(tmp_path / name, shards, train, val, P, "cpu", tmp_path / f"ckpt-{name}")

    whole = subprocess.run(_run(tmp_path / "whole"), env=ENV, capture_output=True, text=True, timeout=300)
    assert whole.returncode == 0, whole.stdout + whole.stderr

    # its own session: the kill takes the whole process group, as a machine failure would
    run = subprocess.Popen(_run(tmp_path / "killed"), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, start_new_session=True)
    seen = ""
    for line in run.stdout:
        seen += line
        if line.startswith("epoch 2/5 "):
            os.killpg(run.pid, signal.SIGKILL)
            break
    run.wait(timeout=60)
    assert run.returncode == -signal.SIGKILL and not (tmp_path / "killed" / "out").exists(), seen
    again = subprocess.run(_run(tmp_path / "killed"), env=ENV, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    resumed = re.search(r"resumed from epoch (\d+)", again.stdout)
    assert resumed and 2 <= int(resumed[1]) < 5, again.stdout
    # nothing run twice, nothing skipped: this run trained exactly the epochs after the checkpoint
    assert re.findall(r"^epoch (\d+)/5 ", again.stdout, re.M) == [str(e) for e in range(int(resumed[1]) + 1, 6)]

    a, b = (json.loads((tmp_path / n / "out" / "stats.json").read_text()) for n in ("whole", "killed"))
    a.pop("images_per_s"), b.pop("images_per_s")
    assert [h["epoch"] for h in b["history"]] == [1, 2, 3, 4, 5] and b["steps"] == 5 * (len(train) // 8)
    assert a == b
    _assert_same(*(load_file(tmp_path / n / "out" / "model.safetensors") for n in ("whole", "killed")), "chosen model")
    # the last checkpoints hold the final weights, head, optimizer and RNG states: all identical
    final = [torch.load(tmp_path / f"ckpt-{n}" / CHECKPOINT, weights_only=True) for n in ("whole", "killed")]
    _assert_same(*final, "final checkpoint")

    # a checkpoint of another run (here other params) is not resumed
    logs = []
    train_fr(shards, train, val, {**P, "epochs": 1, "lr": 0.01}, log=logs.append, checkpoint_dir=tmp_path / "ckpt-whole")
    assert any("belongs to a different run" in s for s in logs) and not any("resumed" in s for s in logs), logs
