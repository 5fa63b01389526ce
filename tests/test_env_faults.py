"""Environment faults: a full disk, a read-only folder and a forbidden one end with one clear line and no
partial or corrupt output. The disk faults are real (a small tmpfs, mounted when the machine allows it);
where it does not, and for permission denied (root passes permission checks), the OS error is injected
at the same write."""
import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, lfw_dir


def _params(tmp_path: Path, data_dir: Path) -> Path:
    """A copy of the project in tmp_path/proj whose data.dir, data/x, is a link to data_dir (params name only
    paths inside the project); returns its params.yaml."""
    import shutil
    proj = tmp_path / "proj"
    for k in ("flows", "tasks", "models"):
        shutil.copytree(ROOT / k, proj / k, ignore=shutil.ignore_patterns("__pycache__"))
    (proj / "data").mkdir()
    data_dir.mkdir(parents=True, exist_ok=True)
    (proj / "data" / "x").symlink_to(data_dir, target_is_directory=True)
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p["data"]["dir"] = "data/x"
    path = proj / "params.yaml"
    path.write_text(yaml.safe_dump(p))
    return path


def _mount(target: Path, options: str) -> bool:
    target.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], capture_output=True)
    return r.returncode == 0


def _fetch(params: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "SYNTHFACE_LFW_DIR": str(lfw_dir())}
    return subprocess.run([sys.executable, "-m", "flows", "fetch-data", "--params", str(params)], cwd=params.parent, env=env,
                          capture_output=True, text=True, timeout=600)


def _injected(monkeypatch, params: Path, err: OSError, capsys) -> tuple[int, str]:
    """The same command in-process, the copy into data.dir failing with `err`."""
    import shutil

    import flows
    from flows.__main__ import main
    monkeypatch.setenv("SYNTHFACE_LFW_DIR", str(lfw_dir()))
    monkeypatch.setattr(flows, "ROOT", params.parent)  # the project copy _params made

    def failing_copy(src, dst, *a, **k):
        with open(dst, "wb") as f:
            f.write(b"partial")  # what a real full disk leaves: some bytes, then the error
        raise err
    monkeypatch.setattr(shutil, "copyfile", failing_copy)
    rc = main(["fetch-data", "--params", str(params)])
    return rc, capsys.readouterr().err


def _no_partial_output(folder: Path):
    from tasks.io import sha256_file
    sha = yaml.safe_load((ROOT / "params.yaml").read_text())["data"]["sha256"]
    for f in folder.iterdir():  # only complete, verified files; no temporary names
        assert f.name in sha and sha256_file(f) == sha[f.name], f"partial or corrupt output {f.name}"


@pytest.mark.parametrize("fault", ["full", "read-only"])
def test_disk_faults_end_clearly_with_no_partial_output(tmp_path, monkeypatch, capsys, fault):
    target = tmp_path / "mnt"
    options = "size=256k" if fault == "full" else "size=256k,ro"
    mounted = _mount(target, options)
    try:
        params = _params(tmp_path, target / "lfw" if fault == "full" else target)
        if mounted:
            r = _fetch(params)
            rc, err = r.returncode, r.stderr
        else:
            (target / "lfw").mkdir(exist_ok=True)
            code = errno.ENOSPC if fault == "full" else errno.EROFS
            rc, err = _injected(monkeypatch, params, OSError(code, os.strerror(code)), capsys)
        expect = "no space left on device" if fault == "full" else "read-only file system"
        assert rc == 2 and expect in err and "Traceback" not in err, err
        out = params.parent / "data" / "x" / "lfw-deepfunneled.zip"
        assert f"({out})" in err  # names the file it could not write
        _no_partial_output(target / "lfw" if (target / "lfw").exists() else target)
    finally:
        if mounted:
            subprocess.run(["umount", str(target)], check=True)


def test_permission_denied_ends_clearly(tmp_path, monkeypatch, capsys):
    (tmp_path / "data").mkdir()
    params = _params(tmp_path, tmp_path / "data")
    rc, err = _injected(monkeypatch, params, PermissionError(errno.EACCES, os.strerror(errno.EACCES)), capsys)
    assert rc == 2 and "permission denied" in err and f"({params.parent / 'data' / 'x' / 'lfw-deepfunneled.zip'})" in err, err
    _no_partial_output(tmp_path / "data")
