"""The unattended release deployed on the local ephemeral Prefect server: a cron-scheduled deployment of
flows/scheduled.py is registered and served (the `python -m flows serve` path), one scheduled run is
executed by the runner against a small git + DVC project, and it releases v0.1.0; an unchanged dataset
is not released again, a changed one becomes v0.1.1. Also: prefect.yaml and the GPU work-pool templates
parse, name the flow that exists and request GPUs."""
import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT

DVC = str(Path(sys.executable).parent / "dvc")

COUNTS = ("import json, pathlib, yaml; p = yaml.safe_load(open('params.yaml')); d = pathlib.Path('artifacts/dataset'); "
          "d.mkdir(parents=True, exist_ok=True); n = p['n']; "
          "(d / 'counts.json').write_text(json.dumps({'images_out': n, 'identities_out': 1, 'shards': 1}))")


def _git(repo, *args):
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


@pytest.fixture
def project(tmp_path):
    """A git + DVC project with a 'package' stage, a DVC remote and a git remote for the tags."""
    repo, remote = tmp_path / "proj", tmp_path / "origin.git"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", "--bare", str(remote)], check=True)
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "config", "user.name", "synthface-test")
    _git(repo, "config", "user.email", "test@synthface.invalid")
    subprocess.run([DVC, "init", "-q"], cwd=repo, check=True)
    subprocess.run([DVC, "remote", "add", "-d", "local", str(tmp_path / "dvc-remote")], cwd=repo, check=True)
    (repo / "params.yaml").write_text("n: 3\n")
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"package": {
        "cmd": f'{sys.executable} -c "{COUNTS}"', "params": ["n"], "outs": ["artifacts/dataset"]}}}))
    (repo / ".gitignore").write_text("/artifacts\n")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "init")
    _git(repo, "remote", "add", "origin", str(remote))
    _git(repo, "push", "-q", "-u", "origin", "main")
    return repo, remote


def test_scheduled_deployment_served_and_run(prefect_harness, project, tmp_path):
    from prefect import get_client
    from prefect.runner import Runner
    from prefect.states import Scheduled

    from flows.scheduled import CRON, scheduled_release_flow
    repo, remote = project
    runner = Runner(name="synthface-test-runner")
    dep_id = runner.add_flow(scheduled_release_flow, name="nightly-release", cron=CRON,
                             parameters={"repo": str(repo)})

    async def schedule_and_run():
        async with get_client() as client:
            dep = await client.read_deployment(dep_id)
            crons = [s.schedule.cron for s in dep.schedules]
            # the server's scheduler would create this run at 02:00; here it is due now
            run = await client.create_flow_run_from_deployment(dep_id, state=Scheduled())
        await runner.start(run_once=True)
        async with get_client() as client:
            return crons, await client.read_flow_run(run.id)

    crons, run = asyncio.run(schedule_and_run())
    assert crons == [CRON]
    assert run.state.is_completed(), run.state
    tags = subprocess.run(["git", "tag", "--list"], cwd=repo, capture_output=True, text=True).stdout.split()
    assert tags == ["v0.1.0"]
    pushed = subprocess.run(["git", "ls-remote", "--tags", str(remote)], capture_output=True, text=True).stdout
    assert "refs/tags/v0.1.0" in pushed
    assert list((tmp_path / "dvc-remote").rglob("*")), "dvc push sent nothing to the remote"
    # the next night: nothing changed, nothing released
    again = scheduled_release_flow(repo=str(repo))
    assert again["released"] is False and again["latest"] == "v0.1.0"
    # a changed dataset: dvc.lock committed by the run, released as the next patch version
    (repo / "params.yaml").write_text("n: 4\n")
    _git(repo, "commit", "-qam", "more images")
    out = scheduled_release_flow(repo=str(repo))
    assert out["released"] is True and out["version"] == "0.1.1" and out["images"] == 4
    assert subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                          capture_output=True, text=True).stdout == ""


def test_prefect_yaml_and_gpu_pool_templates():
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    for d in spec["deployments"]:
        path, _, fn = d["entrypoint"].partition(":")
        assert (ROOT / path).is_file() and f"def {fn}(" in (ROOT / path).read_text()
        assert d["schedules"][0]["cron"].count(" ") == 4 and d["concurrency_limit"] == 1
        assert d["work_pool"]["name"] in ("synthface-gpu-docker", "synthface-gpu-k8s")
    docker = json.loads((ROOT / "deploy" / "docker-gpu-pool.json").read_text())
    k8s = json.loads((ROOT / "deploy" / "k8s-gpu-pool.json").read_text())
    req = docker["job_configuration"]["container_create_kwargs"]["device_requests"][0]
    assert req["Capabilities"] == [["gpu"]] and req["Count"] == "{{ gpus }}"
    container = k8s["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "{{ gpus }}"
    for t in (docker, k8s):  # every placeholder the job uses is a declared variable
        import re
        used = set(re.findall(r"\{\{ (\w+) \}\}", json.dumps(t["job_configuration"])))
        assert used <= set(t["variables"]["properties"]), used - set(t["variables"]["properties"])
