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

import pytest

from conftest import SAMPLE, output_files

# one xdist worker runs every test of the shared tiny sampling project (its fixture builds it once)
pytestmark = pytest.mark.xdist_group("sampling")

DVC = str(Path(sys.executable).parent / "dvc")


def test_second_dvc_repro_fails_fast(tmp_path):
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([DVC, "init", "-q"], cwd=tmp_path, check=True, env=env)
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  slow:\n    cmd: python -c \"import time, pathlib; time.sleep(15); pathlib.Path('out.txt').write_text('done')\"\n"
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
    # it resumed: the block finished before the kill came from the cache, not from the generator again
    assert "rendering identities 0-1 " not in again.stdout + again.stderr, again.stdout + again.stderr
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
