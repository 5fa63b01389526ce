"""Sampling on a Dask cluster: the sample stage's blocks run on a local Dask cluster of two worker
processes, each offering one GPU slot (Dask resources; a task takes one), with a fresh cache so every
block is really rendered there; the shards and plan equal the single-process run's byte for byte."""
import os
import re
import shutil
import subprocess

import pytest

from conftest import SAMPLE, output_files

# one xdist worker runs every test of the shared tiny sampling project (its fixture builds it once)
pytestmark = pytest.mark.xdist_group("sampling")


def test_sampling_on_a_two_worker_dask_cluster_gives_the_single_process_bytes(sampling, tmp_path):
    proj, env, _, ref = sampling
    dask_proj = tmp_path / "proj"  # a copy: the reference project stays as the other tests left it
    shutil.copytree(proj, dask_proj, ignore=shutil.ignore_patterns(".prefect*", "sample"))
    env = {**env, "PYTHONPATH": str(dask_proj), "SYNTHFACE_PREFECT_HOME": str(tmp_path / "prefect")}  # nothing cached
    params = dask_proj / "params.yaml"
    params.write_text(params.read_text().replace("gpus_per_task: 0", "gpus_per_task: 1").replace("workers: null", "workers: 2"))
    run = subprocess.run([*SAMPLE, "--runner", "dask"], cwd=dask_proj, env=env, capture_output=True, text=True, timeout=900)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-4000:]
    rendered = re.findall(r"sample: rendering identities (\d+)-(\d+) \(pid (\d+), cpu\)", log)
    assert sorted((a, b) for a, b, _ in rendered) == [("0", "1"), ("2", "3"), ("4", "5")], log[-4000:]
    pids = {int(pid) for _, _, pid in rendered}
    assert len(pids) == 2 and os.getpid() not in pids, f"blocks ran in {pids}: expected the two Dask worker processes"
    assert output_files(dask_proj / "artifacts" / "sample") == ref


def test_a_cluster_without_gpu_slots_is_refused_before_any_block_is_submitted():
    from distributed import Client, LocalCluster

    from flows.runners import check_cluster
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, Client(cluster) as client:
        ex = {"runner": "dask", "address": cluster.scheduler_address, "workers": None, "gpus_per_task": 1}
        try:
            check_cluster(ex, client)
        except RuntimeError as e:
            assert "--resources GPU=1" in str(e) and cluster.scheduler_address in str(e)
        else:
            raise AssertionError("a cluster offering no GPU slots was accepted")
        check_cluster({**ex, "gpus_per_task": 0}, client)  # CPU-only tasks need no slots
