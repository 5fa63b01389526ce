"""release flow: publish the packaged dataset as a versioned release other teams pull.

    python -m flows release --version 1.2.0       # or --bump major|minor|patch (from the newest v* tag)
    python -m flows release --bump minor --remote storage --no-push-tags

Checks that the git workspace is clean and `dvc status` says the pipeline is up to date (a release is
exactly a commit's outputs), pushes every DVC output to the configured remote (dvc remote default, or
--remote), then creates the annotated tag v<version> whose message carries the dataset's counts and the
md5 DVC recorded for artifacts/dataset, and pushes the tag when the repository has a git remote.
Consumers then use `dvc get/import <repo> artifacts/dataset --rev v<version>` or `dvc.api` (README).
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml
from prefect import flow, get_run_logger, task

from . import ROOT

SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z.-]+)?$")


class ReleaseError(RuntimeError):
    pass


def tool(name: str) -> str:
    """A command from PATH, else the one installed beside this interpreter (a venv not on PATH)."""
    beside = Path(sys.executable).parent / name
    return shutil.which(name) or (str(beside) if beside.exists() else name)


def _run(*cmd: str, cwd=None) -> str:
    r = subprocess.run([tool(cmd[0]), *cmd[1:]], cwd=cwd or ROOT, capture_output=True, text=True)
    if r.returncode != 0:
        raise ReleaseError(f"`{' '.join(cmd)}` failed: {(r.stderr or r.stdout).strip()[-2000:]}")
    return r.stdout


def next_version(tags: list[str], bump: str) -> str:
    """The newest vX.Y.Z tag bumped by major|minor|patch (0.1.0 when there is none)."""
    versions = sorted(tuple(int(x) for x in SEMVER.match(t[1:]).groups()[:3]) for t in tags
                      if t.startswith("v") and SEMVER.match(t[1:]) and "-" not in t)
    if not versions:
        return "0.1.0"
    major, minor, patch = versions[-1]
    return {"major": f"{major + 1}.0.0", "minor": f"{major}.{minor + 1}.0", "patch": f"{major}.{minor}.{patch + 1}"}[bump]


@task
def check_releasable(repo: Path) -> str:
    """The commit to release: tracked files unchanged and every stage up to date."""
    dirty = [line for line in _run("git", "status", "--porcelain", "--untracked-files=no", cwd=repo).splitlines() if line.strip()]
    if dirty:
        raise ReleaseError(f"uncommitted changes ({', '.join(d[3:] for d in dirty[:5])}): commit them first")
    status = json.loads(_run("dvc", "status", "--json", cwd=repo) or "{}")
    if status:
        raise ReleaseError(f"the pipeline is not up to date ({', '.join(sorted(status)[:5])}): run `dvc repro` and commit dvc.lock")
    return _run("git", "rev-parse", "HEAD", cwd=repo).strip()


@task(retries=2, retry_delay_seconds=10)
def push_data(remote: str | None, repo: Path) -> None:
    if not remote and not _run("dvc", "remote", "default", cwd=repo).strip():
        raise ReleaseError("no DVC remote configured: `dvc remote add -d storage <url>` and commit .dvc/config")
    _run("dvc", "push", *(["-r", remote] if remote else []), cwd=repo)


@task
def tag_release(version: str, commit: str, push: bool, repo: Path) -> dict:
    lock = yaml.safe_load(_run("git", "show", f"{commit}:dvc.lock", cwd=repo))
    outs = {o["path"]: o.get("md5") for o in lock["stages"]["package"]["outs"]}
    counts = json.loads((repo / "artifacts" / "dataset" / "counts.json").read_text())
    info = {"version": version, "commit": commit, "dataset_md5": outs.get("artifacts/dataset"),
            "images": counts["images_out"], "identities": counts["identities_out"], "shards": counts["shards"]}
    # the checked commit, even if HEAD moved during the push
    _run("git", "tag", "-a", f"v{version}", "-m", f"synthface dataset v{version}\n\n{json.dumps(info, indent=2)}", commit, cwd=repo)
    remotes = _run("git", "remote", cwd=repo).split()
    if push and remotes:
        _run("git", "push", remotes[0], f"v{version}", cwd=repo)
    return {**info, "tag_pushed_to": remotes[0] if push and remotes else None}


def release_tags(repo: Path) -> list[str]:
    return _run("git", "tag", "--list", "v*", cwd=repo).split()


def released_md5(repo: Path) -> tuple[str | None, str | None]:
    """(newest release tag, the dataset md5 its message records), or (None, None) before the first."""
    tags = sorted(release_tags(repo), key=lambda t: tuple(int(x) for x in SEMVER.match(t[1:]).groups()[:3])
                  if SEMVER.match(t[1:]) else (-1,))
    if not tags:
        return None, None
    msg = _run("git", "tag", "-l", "--format=%(contents)", tags[-1], cwd=repo)
    info = json.loads(msg[msg.index("{"):]) if "{" in msg else {}
    return tags[-1], info.get("dataset_md5")


@flow(name="release")
def release_flow(version: str | None = None, bump: str = "patch", remote: str | None = None, push_tags: bool = True,
                 repo: str | None = None) -> dict:
    """repo: the project checkout to release (default: this one)."""
    log = get_run_logger()
    repo = Path(repo) if repo else ROOT
    tags = release_tags(repo)
    version = version or next_version(tags, bump)
    if not SEMVER.match(version):
        raise ReleaseError(f"version {version!r} is not semantic (MAJOR.MINOR.PATCH[-pre])")
    if f"v{version}" in tags:
        raise ReleaseError(f"tag v{version} already exists: releases are immutable, choose a new version")
    commit = check_releasable(repo)
    push_data(remote, repo)
    info = tag_release(version, commit, push_tags, repo)
    log.warning(f"release: {info}")
    return info
