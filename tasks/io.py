"""Atomic, deterministic file writing and content digests shared by every stage.

Every output is written to a temporary name in the same folder and renamed into place, so a crash
never leaves a partial file under an output name.
"""
from __future__ import annotations

import errno
import fnmatch
import hashlib
import io
import json
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_UMASK = os.umask(0)
os.umask(_UMASK)


@dataclass(frozen=True)
class Blob:
    """A file kept in a content-addressed folder (named by its sha256) instead of inside a task result."""
    sha256: str
    size: int


class InputError(ValueError):
    """A bad input (an import source, an archive, a data file) that a user fixes: the CLI prints it as one
    line naming the file or key and exits 2, without a traceback."""


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    except OSError as e:  # a read-only or forbidden folder: name the output, not the temporary file
        raise type(e)(e.errno, e.strerror, str(path)) from e
    os.close(fd)
    try:
        yield Path(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)  # the bytes are on disk before the name points at them
        finally:
            os.close(fd)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give outputs the usual permissions
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        # name the output that could not be written (shutil names the source it was copying from)
        if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS) or (e.filename is None and e.errno is not None):
            raise type(e)(e.errno, e.strerror, str(path)) from e
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_stale_temps(folder) -> list[str]:
    """Delete the temporary files of writers that died (SIGKILL, power loss) in `folder`: atomic_path names
    them .<name>.<pid>.<random>.tmp, and a file whose pid is no longer running will never be renamed.
    A live writer's file (another run in the same folder) is left alone. Returns the names removed."""
    removed = []
    for f in Path(folder).glob(".*.tmp"):
        parts = f.name.rsplit(".", 3)  # ['.<name>', '<pid>', '<random>', 'tmp']
        if len(parts) == 4 and parts[1].isdigit() and not _alive(int(parts[1])):
            f.unlink(missing_ok=True)
            removed.append(f.name)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def write_bytes(path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def write_json(path, obj) -> None:
    write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n").encode())


def _jsonable(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_parquet(path, df) -> None:
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)


def write_npy(path, arr: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    write_bytes(path, buf.getvalue())


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# Files a stage folder holds beside its outputs: the timing log, per-block locks and a killed writer's
# temporary files. .dvcignore keeps `artifacts/*/<pattern>` for each out of DVC's hash (a test checks both agree).
NOT_OUTPUT = ("timing.json", ".*.lock", ".*.tmp")


def not_output(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in NOT_OUTPUT)


def digest_tree(root) -> str:
    """A file's sha256; for a folder, sha256 over (relative path, file sha256) of its output files in
    sorted order (not_output files left out, so a run's timing never changes what depends on it)."""
    root = Path(root)
    if root.is_file():
        return sha256_file(root)
    h = hashlib.sha256()
    for p in sorted(p for p in root.rglob("*") if p.is_file() and not not_output(p.name)):
        h.update(f"{p.relative_to(root)}\0{sha256_file(p)}\n".encode())
    return h.hexdigest()
