"""Deterministic WebDataset tar shards: same samples in -> same bytes out.

Members are written in sample order with fixed mtime/uid/gid/mode, so a shard's sha256 depends only on
its content; each shard is written under a temporary name and renamed, so readers never see a partial
shard. Keys must not contain dots (WebDataset splits the extension at the first dot).

    infos = write_shards(samples, out_dir, "train", maxcount=1000)  # samples: dicts {"__key__", "jpg": bytes, ...}
    with file_lock(path): write_tar_if_changed(path, samples)   # overlapping runs: one writes, the others find it done
    for keys, images, labels in iter_images(shard_paths, keys=None, batch_size=256): ...   # decoded, streamed
"""
from __future__ import annotations

import fcntl
import hashlib
import io
import json
import tarfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from PIL import Image

from .io import _jsonable, atomic_path, sha256_file

MTIME = 946684800  # 2000-01-01, fixed so bytes never depend on the clock


def _encode(value) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bool):
        raise TypeError("a bool member is ambiguous: store it inside the json member")
    if isinstance(value, (int, np.integer)):
        return str(int(value)).encode()
    return json.dumps(value, sort_keys=True, default=_jsonable).encode()


def _tar_into(fileobj, samples: Iterable[dict]) -> int:
    n = 0
    with tarfile.open(fileobj=fileobj, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for sample in samples:
            key = sample["__key__"]
            if "." in key or "/" in key:
                raise ValueError(f"sample key {key!r} must not contain '.' or '/'")
            for ext in sorted(k for k in sample if k != "__key__"):
                data = _encode(sample[ext])
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime, info.mode = len(data), MTIME, 0o644
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                tar.addfile(info, io.BytesIO(data))
            n += 1
    return n


def write_tar(path, samples: Iterable[dict]) -> int:
    """Write one tar of samples atomically; return the number of samples."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        return _tar_into(f, samples)


class _HashSink:
    """A write-only file that keeps only the sha256 of what it is given."""

    def __init__(self):
        self.h, self.n = hashlib.sha256(), 0

    def write(self, b) -> int:
        self.h.update(b)
        self.n += len(b)
        return len(b)

    def tell(self) -> int:
        return self.n


def tar_sha256(samples: list[dict]) -> str:
    """The sha256 write_tar's file would have, without writing it."""
    sink = _HashSink()
    _tar_into(sink, samples)
    return sink.h.hexdigest()


@contextmanager
def file_lock(path):
    """An exclusive lock on `path` (beside it: .<name>.lock) for as long as the block runs. The kernel drops
    it when the holder exits or is killed, so a crashed run never leaves a lock that blocks the next."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def write_tar_if_changed(path, samples: list[dict]) -> bool:
    """write_tar unless `path` already holds exactly these bytes; returns whether it wrote. Hold
    file_lock(path) around it (and whatever produced the samples) when runs may overlap."""
    if Path(path).is_file() and sha256_file(path) == tar_sha256(samples):
        return False
    write_tar(path, samples)
    return True


def write_shards(samples: Iterable[dict], out_dir, prefix: str, maxcount: int) -> list[dict]:
    """Split samples into `{prefix}-NNNNNN.tar` shards of at most maxcount; return shard infos."""
    out_dir = Path(out_dir)
    infos, batch, idx = [], [], 0

    def flush():
        nonlocal idx, batch
        name = f"{prefix}-{idx:06d}.tar"
        count = write_tar(out_dir / name, batch)
        infos.append({"shard": name, "count": count, "sha256": sha256_file(out_dir / name), "bytes": (out_dir / name).stat().st_size})
        idx, batch = idx + 1, []

    for s in samples:
        batch.append(s)
        if len(batch) >= maxcount:
            flush()
    if batch:
        flush()
    return infos


def read_tar(path) -> Iterator[dict]:
    """Yield samples of one shard as dicts of raw bytes (grouped by key, in order)."""
    current: dict | None = None
    with tarfile.open(path, "r") as tar:
        for m in tar:
            if not m.isfile():
                continue
            key, _, ext = m.name.partition(".")
            if current is None or current["__key__"] != key:
                if current is not None:
                    yield current
                current = {"__key__": key}
            current[ext] = tar.extractfile(m).read()
    if current is not None:
        yield current


def decode_image(data: bytes) -> np.ndarray:
    """Encoded image bytes -> uint8 HxWx3 RGB."""
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def iter_images(shards, keys=None, batch_size: int = 256) -> Iterator[tuple[list[str], np.ndarray, np.ndarray]]:
    """Stream (keys, uint8 NHWC images, cls labels) batches from shards, optionally only the given keys,
    so a stage never holds a whole dataset decoded in memory."""
    ks, ims, cls = [], [], []
    for sh in shards:
        for s in read_tar(sh):
            if keys is not None and s["__key__"] not in keys:
                continue
            ks.append(s["__key__"]); ims.append(decode_image(s.get("jpg", s.get("png")))); cls.append(int(s.get("cls", b"-1")))
            if len(ks) == batch_size:
                yield ks, np.stack(ims), np.array(cls)
                ks, ims, cls = [], [], []
    if ks:
        yield ks, np.stack(ims), np.array(cls)


def write_wids_index(path, shards: list[dict], name: str) -> None:
    """A wids index (webdataset's indexed, random-access reader) beside the shards, urls relative to it:
    `wids.ShardListDataset("index.wids.json")[i]` is sample i in manifest order."""
    from .io import write_json
    write_json(path, {"__kind__": "wids-shard-index-v1", "wids_version": 1, "name": name,
                      "shardlist": [{"url": s["shard"], "nsamples": s["count"], "filesize": s["bytes"]} for s in shards]})


def tar_index(path) -> dict[str, dict[str, tuple[int, int]]]:
    """key -> {ext: (byte offset, size)} of one shard's members, for random access without extracting."""
    out: dict[str, dict[str, tuple[int, int]]] = {}
    with tarfile.open(path, "r") as tar:
        for m in tar:
            if m.isfile():
                key, _, ext = m.name.partition(".")
                out.setdefault(key, {})[ext] = (m.offset_data, m.size)
    return out
