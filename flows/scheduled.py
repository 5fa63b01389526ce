"""The unattended release: pull inputs -> `dvc repro` -> commit dvc.lock -> release (dvc push + tag).

    python -m flows serve                         # one GPU box: this process holds the schedule and runs it
    python -m flows serve --cron "0 3 * * 0"      # weekly instead of nightly (UTC)
    prefect deploy --all                          # work pools from prefect.yaml (Docker / Kubernetes, GPUs)

Each run works in a project checkout (`repo`, default this one): `git pull --ff-only` when the branch
tracks an upstream, `dvc pull` of whatever the remote already holds (stages whose outputs come back are
not recomputed; missing ones are), `dvc repro`, then a commit of dvc.lock and the metrics when they
changed. A dataset whose md5 equals the newest release's is not released again; otherwise the release
flow tags the next version (`bump`) and pushes data and tag.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import yaml
from prefect import flow, get_run_logger, task

from . import ROOT
from .release import _run, release_flow, released_md5, tool

CRON = "0 2 * * *"  # nightly, 02:00 UTC
TRACKED = ("dvc.lock", "metrics", "plots")


@task
def pull_inputs(repo: Path) -> None:
    if subprocess.run(["git", "rev-parse", "--abbrev-ref", "@{upstream}"], cwd=repo, capture_output=True).returncode == 0:
        _run("git", "pull", "--ff-only", cwd=repo)
    # outputs the remote already has come back; the rest is recomputed by repro (a partial pull is fine)
    subprocess.run([tool("dvc"), "pull", "--allow-missing"], cwd=repo, capture_output=True, text=True)


@task
def reproduce(repo: Path) -> str:
    return _run("dvc", "repro", cwd=repo)


@task
def commit_outputs(repo: Path) -> str | None:
    """Commit dvc.lock, metrics and plots when the run changed them; returns the new commit or None."""
    paths = [p for p in TRACKED if (repo / p).exists()]
    _run("git", "add", "--", *paths, cwd=repo)
    if subprocess.run(["git", "diff", "--cached", "--quiet"], cwd=repo).returncode == 0:
        return None
    _run("git", "commit", "-q", "-m", "scheduled run: dvc repro", cwd=repo)
    return _run("git", "rev-parse", "HEAD", cwd=repo).strip()


def dataset_md5(repo: Path) -> str | None:
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return {o["path"]: o.get("md5") for o in lock["stages"]["package"]["outs"]}.get("artifacts/dataset")


@flow(name="scheduled-release")
def scheduled_release_flow(bump: str = "patch", remote: str | None = None, push_tags: bool = True,
                           repo: str | None = None) -> dict:
    log = get_run_logger()
    root = Path(repo) if repo else ROOT
    pull_inputs(root)
    reproduce(root)
    commit = commit_outputs(root)
    tag, md5 = released_md5(root)
    if md5 is not None and md5 == dataset_md5(root):
        log.warning(f"scheduled-release: the dataset is unchanged since {tag}; nothing to release")
        return {"released": False, "latest": tag, "commit": commit}
    info = release_flow(bump=bump, remote=remote, push_tags=push_tags, repo=str(root))
    log.warning(f"scheduled-release: released v{info['version']}")
    return {"released": True, **info}


def serve(cron: str = CRON, name: str = "nightly-release") -> None:
    """The single-GPU-box path: this process registers the deployment and runs it on its schedule."""
    scheduled_release_flow.serve(name=name, cron=cron, tags=["synthface", "release"])

