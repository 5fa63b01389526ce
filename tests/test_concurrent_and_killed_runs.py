"""Concurrent and killed runs in one workspace: a second `dvc repro` fails fast with a clear message; two
Prefect runs of the sample stage render and write each block once; a sample run killed with SIGKILL shows
no partial block and its rerun ends byte-identical to an uninterrupted run."""
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from conftest import ROOT, output_files

DVC = str(Path(sys.executable).parent / "dvc")


def test_second_dvc_repro_fails_fast(tmp_path):
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([DVC, "init", "-q"], cwd=tmp_path, check=True, env=env)
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  slow:\n    cmd: python -c \"import time, pathlib; time.sleep(25); pathlib.Path('out.txt').write_text('done')\"\n"
        "    outs: [out.txt]\n")
    first = subprocess.Popen([DVC, "repro"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 60
        while not (tmp_path / ".dvc" / "tmp" / "rwlock").exists() and time.time() < deadline:
            time.sleep(0.2)
        time.sleep(2)  # the first run holds the workspace lock while its stage runs
        t0 = time.time()
        second = subprocess.run([DVC, "repro"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        took = time.time() - t0
        assert first.poll() is None, "the first run ended before the second started: the check proves nothing"
    finally:
        out, _ = first.communicate(timeout=120)
    # DVC's lock names the run that holds the workspace: "'out.txt' is busy, it is being blocked by: (PID n): dvc repro"
    msg = second.stderr + second.stdout
    assert second.returncode != 0 and re.search(r"is busy, it is being blocked by:\s+\(PID \d+\): .*dvc repro", msg), msg
    assert took < 20, f"the second run waited {took:.0f} s instead of failing fast"
    assert first.returncode == 0 and (tmp_path / "out.txt").read_text() == "done", out


def _tiny_sampling_project(proj: Path) -> None:
    """flows/tasks/models and params, with tiny real generator, encoder and attribute-pool artifacts."""
    for k in ("flows", "tasks", "models"):
        shutil.copytree(ROOT / k, proj / k, ignore=shutil.ignore_patterns("__pycache__"))
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p["sample"].update({"num_identities": 6, "embeddings_per_identity": 2, "images_per_embedding": 1, "anchor_iters": 10,
                        "privacy_threshold": 0.9, "num_inference_steps": 2, "id_weight": 0.0, "beta": 0.0, "block_size": 2,
                        "batch_size": 4})
    (proj / "params.yaml").write_text(yaml.safe_dump(p))
    from models.iresnet import IResNet
    from tasks.encoder import save_encoder
    from tasks.train_generator import build_pipeline
    torch.manual_seed(0)
    gp = {"resolution": 16, "unet": {"block_out_channels": [32, 32], "layers_per_block": 1, "attention_head_dim": 8,
                                     "norm_num_groups": 8}, "conditioner_dims": [32, 32], "num_train_timesteps": 1000}
    art = proj / "artifacts"
    build_pipeline(gp, embedding_dim=16).save_pretrained(art / "generator" / "pipeline")
    rng = np.random.default_rng(0)
    e = rng.standard_normal((12, 16))
    np.savez(art / "generator" / "real_stats.npz", embeddings=e / np.linalg.norm(e, axis=1, keepdims=True), labels=np.arange(12) // 3)
    save_encoder(IResNet((1, 1), (8, 16), 16, 16).eval(), {"layers": [1, 1], "widths": [8, 16], "input_size": 16,
                                                             "embedding_dim": 16}, art / "encoder")
    (art / "align").mkdir(parents=True)
    pd.DataFrame(rng.uniform(-1, 1, (20, 3)), columns=["yaw", "pitch", "roll"]).to_parquet(art / "align" / "attributes.parquet")


@pytest.fixture(scope="module")
def sampling(tmp_path_factory):
    """The tiny project after two concurrent sample runs: (project, env, logs, reference block bytes)."""
    proj = tmp_path_factory.mktemp("sampling") / "proj"
    _tiny_sampling_project(proj)
    # the project's own Prefect home (flows/__init__.py), not one a test in this process pointed Prefect at
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "SYNTHFACE_PREFECT"))}, "PYTHONPATH": str(proj)}
    runs = [subprocess.Popen(SAMPLE, cwd=proj, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    logs = [r.communicate(timeout=900)[0] for r in runs]
    assert [r.returncode for r in runs] == [0, 0], "\n".join(logs)
    return proj, env, "\n".join(logs), output_files(proj / "artifacts" / "sample")


SAMPLE = [sys.executable, "-m", "flows", "sample"]


def test_two_sampling_runs_render_and_write_each_block_once(sampling):
    proj, env, logs, ref = sampling
    assert sorted(k for k in ref if k.startswith("block-")) == [f"block-{b:06d}.tar" for b in range(3)]
    rendered = re.findall(r"sample: rendering identities (\d+)-(\d+)", logs)
    written = re.findall(r"sample: block (\d+)/3 written", logs)
    on_disk = re.findall(r"sample: block (\d+)/3 already on disk", logs)
    assert sorted(rendered) == [("0", "1"), ("2", "3"), ("4", "5")], logs  # each block rendered by one run only
    assert sorted(written) == ["1", "2", "3"] and sorted(on_disk) == ["1", "2", "3"], logs


def test_sigkill_during_sampling_then_rerun_gives_the_same_bytes(sampling):
    """Killed at a random point after its first block, with a fresh cache: what is visible is complete,
    and the rerun resumes to the uninterrupted run's bytes, stale temporary files removed."""
    proj, env, _, ref = sampling
    out = proj / "artifacts" / "sample"
    shutil.rmtree(out)
    env = {**env, "SYNTHFACE_PREFECT_HOME": str(proj / ".prefect-crash")}  # nothing cached: it really renders
    # its own process group: the kill takes the run and its Prefect server, as a machine failure would
    run = subprocess.Popen(SAMPLE, cwd=proj, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           start_new_session=True)
    seen = ""
    for line in run.stdout:
        seen += line
        if "block 1/3 written" in line:
            break
    seed = random.randrange(1 << 30)
    time.sleep(random.Random(seed).uniform(0.0, 1.5))
    os.killpg(run.pid, signal.SIGKILL)
    run.wait(timeout=60)
    assert "block 1/3 written" in seen, seen
    (out / f".block-000002.tar.{run.pid}.dead0001.tmp").write_bytes(b"half a tar")  # as a kill mid-write leaves it
    visible = {k: v for k, v in output_files(out).items() if not k.startswith(".")}
    partial = [k for k, v in visible.items() if ref.get(k) != v]
    assert visible and not partial, f"killed (seed {seed}): partial outputs visible: {partial}"
    again = subprocess.run(SAMPLE, cwd=proj, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout + again.stderr
    assert output_files(out) == ref, f"the rerun after a kill (seed {seed}) differs from the uninterrupted run"


def test_stale_temporary_files_of_dead_writers_only_are_removed(tmp_path):
    from tasks.io import remove_stale_temps
    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / f".a.tar.{dead.pid}.x1.tmp").write_bytes(b"x")
    (tmp_path / f".b.tar.{os.getpid()}.x2.tmp").write_bytes(b"x")  # a live writer's
    (tmp_path / "c.tar").write_bytes(b"x")
    assert remove_stale_temps(tmp_path) == [f".a.tar.{dead.pid}.x1.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".b.tar.{os.getpid()}.x2.tmp", "c.tar"]
