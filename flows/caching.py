"""Content-addressed cache keys for Prefect tasks.

A key hashes the code version (the bytes of every .py file in flows/, tasks/, models/), the task name
and every parameter; a `pathlib.Path` parameter contributes the sha256 of its bytes (a folder: of all
its files), never its path string. Same bytes -> cache hit; changed bytes under the same path -> miss.

    @task(cache_key_fn=content_key, persist_result=True)
    def sample_block(generator_dir: Path, block: int, params: dict): ...
"""
from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path

from tasks.io import digest_tree

from . import ROOT


@lru_cache(maxsize=1)
def code_version() -> str:
    h = hashlib.sha256()
    for pkg in ("flows", "tasks", "models"):
        for p in sorted((ROOT / pkg).rglob("*.py")):
            h.update(f"{p.relative_to(ROOT)}\0".encode())
            h.update(p.read_bytes())
    return h.hexdigest()


@lru_cache(maxsize=256)
def _digest_cached(path: str, mtime_ns: int, size: int) -> str:
    return digest_tree(path)


def digest(path: Path) -> str:
    """sha256 of a file's bytes or of a folder's files; memoised per (path, mtime, size) within a process."""
    st = path.stat()
    if path.is_dir():  # a folder's stat does not change when a file inside is rewritten: hash it fresh
        return digest_tree(path)
    return _digest_cached(str(path.resolve()), st.st_mtime_ns, st.st_size)


def _canon(v):
    if isinstance(v, Path):
        return {"sha256": digest(v)}
    if isinstance(v, dict):
        return {str(k): _canon(x) for k, x in sorted(v.items())}
    if isinstance(v, (list, tuple)):
        return [_canon(x) for x in v]
    return v


def content_key(context, parameters: dict) -> str:
    name = context.task.name if context is not None and getattr(context, "task", None) else ""
    blob = json.dumps({"code": code_version(), "task": name, "params": _canon(parameters)}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()
