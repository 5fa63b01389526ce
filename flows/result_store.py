"""Cached task results that cannot run code: a data-only serializer and a sealed (HMAC-signed) store.

Prefect's default result serializer is pickle, and a result record names its own serializer: whoever can write
under the result storage (e.g. a cache volume shared by Docker or Kubernetes workers) could plant a record that
runs code when the next run reads it - Prefect deserializes a record even to check that it exists. Two
defences, both on every cached task (`flows.caching.cached_task`):

- `DataSerializer` ("synthface-data") writes a result as JSON plus raw arrays: dicts, lists, tuples, str,
  int, float, bool, None, bytes, numpy arrays and scalars (never object dtype), torch tensors, Paths and
  `tasks.io.Blob` references. Reading it builds only those; anything else is refused when written.
- `SealedFileSystem` signs each record it writes with HMAC-SHA256 under a key the storage does not hold, and
  verifies before Prefect parses anything: a record that is unsigned, altered, or names any other serializer
  is refused, which Prefect treats as a cache miss (the task runs again and overwrites it).

The key: SYNTHFACE_RESULT_KEY (hex, e.g. from a Kubernetes secret, for workers that share one store) or
`<Prefect home>/result-key`, created on first use (32 random bytes, mode 0600).

    @cached_task()                       # flows/caching.py: content key + these two
    def step(x: Path) -> dict: ...
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import os
import struct
from pathlib import Path, PurePath
from typing import Any, Literal

import numpy as np
import torch
from prefect._internal.compatibility.async_dispatch import async_dispatch
from prefect.filesystems import LocalFileSystem
from prefect.serializers import Serializer

from tasks.io import Blob

SEAL = b"synthface-sealed-v1\n"
FORMAT = b"synthface-data-v1\n"
SERIALIZER = "synthface-data"


class SealBroken(ValueError):
    """A stored record whose seal does not verify (or names another serializer): never parsed."""


def _key() -> bytes:
    env = os.environ.get("SYNTHFACE_RESULT_KEY")
    if env:
        return bytes.fromhex(env)
    path = Path(os.environ.get("PREFECT_HOME", ".prefect")) / "result-key"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:  # O_EXCL: two processes starting together agree on the first one's key
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(os.urandom(32).hex().encode())
        except FileExistsError:
            pass
    return bytes.fromhex(path.read_text().strip())


def seal(content: bytes) -> bytes:
    return SEAL + hmac.new(_key(), content, hashlib.sha256).hexdigest().encode() + b"\n" + content


def unseal(data: bytes, where: str = "result") -> bytes:
    """The record inside a sealed file; SealBroken when the seal is missing or wrong, or the record names a
    serializer other than this module's (checked on the raw JSON, nothing is deserialized)."""
    head = len(SEAL) + 65
    if not data.startswith(SEAL) or len(data) < head:
        raise SealBroken(f"{where}: not a sealed synthface result")
    mac, content = data[len(SEAL):head - 1], data[head:]
    if not hmac.compare_digest(mac, hmac.new(_key(), content, hashlib.sha256).hexdigest().encode()):
        raise SealBroken(f"{where}: seal does not verify (written elsewhere or altered)")
    try:
        kind = json.loads(content)["metadata"]["serializer"]["type"]
    except (ValueError, KeyError, TypeError):
        raise SealBroken(f"{where}: not a Prefect result record") from None
    if kind != SERIALIZER:
        raise SealBroken(f"{where}: serializer {kind!r} refused (only {SERIALIZER!r} is read)")
    return content


class SealedFileSystem(LocalFileSystem):
    """LocalFileSystem whose files are sealed on write and verified on read (`seal`, `unseal`). Without a
    basepath it stores under Prefect's PREFECT_LOCAL_STORAGE_PATH as set when the file is read or written."""
    _block_type_name = "Synthface Sealed File System"

    def _resolve_path(self, path: str) -> Path:
        if self.basepath:
            return super()._resolve_path(path)
        from prefect.settings import PREFECT_LOCAL_STORAGE_PATH
        return LocalFileSystem(basepath=str(PREFECT_LOCAL_STORAGE_PATH.value()))._resolve_path(path)

    async def aread_path(self, path: str) -> bytes:
        return unseal(await super().aread_path(path), str(path))

    @async_dispatch(aread_path)
    def read_path(self, path: str) -> bytes:
        return unseal(super().read_path(path, _sync=True), str(path))

    async def awrite_path(self, path: str, content: bytes) -> str:
        return await super().awrite_path(path, seal(content))

    @async_dispatch(awrite_path)
    def write_path(self, path: str, content: bytes) -> str:
        return super().write_path(path, seal(content), _sync=True)


def _array_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.ascontiguousarray(a), allow_pickle=False)  # object dtype: ValueError
    return buf.getvalue()


def _encode(o: Any, blobs: list[bytes]) -> Any:
    if o is None or isinstance(o, (bool, str)) or (isinstance(o, (int, float)) and not isinstance(o, np.generic)):
        return o
    if isinstance(o, list):
        return [_encode(x, blobs) for x in o]
    if isinstance(o, tuple):
        return {"u": [_encode(x, blobs) for x in o]}
    if isinstance(o, dict):
        return {"d": [[_encode(k, blobs), _encode(v, blobs)] for k, v in o.items()]}
    if isinstance(o, (bytes, bytearray)):
        blobs.append(bytes(o))
        return {"y": len(blobs) - 1}
    if isinstance(o, np.ndarray):
        blobs.append(_array_bytes(o))
        return {"a": len(blobs) - 1}
    if isinstance(o, np.generic) and o.dtype.kind in "biuf":
        return {"g": [o.dtype.str, o.item()]}
    if isinstance(o, torch.Tensor):
        t = o.detach().cpu().contiguous()
        bf16 = t.dtype == torch.bfloat16
        blobs.append(_array_bytes((t.view(torch.int16) if bf16 else t).numpy()))
        return {"t": len(blobs) - 1, "bf16": bf16}
    if isinstance(o, PurePath):
        return {"p": str(o)}
    if isinstance(o, Blob):
        return {"B": [o.sha256, o.size]}
    raise TypeError(f"a cached result holds a {type(o).__name__}: {SERIALIZER} stores data only "
                    "(dict, list, tuple, str, numbers, bytes, arrays, tensors, paths)")


def _decode(o: Any, blobs: list[bytes]) -> Any:
    if o is None or isinstance(o, (bool, str, int, float)):
        return o
    if isinstance(o, list):
        return [_decode(x, blobs) for x in o]
    if not isinstance(o, dict) or len(o) not in (1, 2):
        raise ValueError("synthface-data: malformed node")
    tag = next(iter(o))
    if tag == "u":
        return tuple(_decode(x, blobs) for x in o["u"])
    if tag == "d":
        return {_decode(k, blobs): _decode(v, blobs) for k, v in o["d"]}
    if tag == "y":
        return blobs[o["y"]]
    if tag == "a":
        return np.lib.format.read_array(io.BytesIO(blobs[o["a"]]), allow_pickle=False)
    if tag == "g":
        dtype, value = o["g"]
        if np.dtype(dtype).kind not in "biuf":
            raise ValueError(f"synthface-data: scalar dtype {dtype!r} refused")
        return np.dtype(dtype).type(value)
    if tag == "t":
        t = torch.from_numpy(np.lib.format.read_array(io.BytesIO(blobs[o["t"]]), allow_pickle=False).copy())
        return t.view(torch.bfloat16) if o.get("bf16") else t
    if tag == "p":
        return Path(o["p"])
    if tag == "B":
        return Blob(str(o["B"][0]), int(o["B"][1]))
    raise ValueError(f"synthface-data: unknown tag {tag!r}")


class DataSerializer(Serializer):
    """Results as JSON plus raw array bytes (module docstring): reading one never imports or calls anything."""
    type: Literal["synthface-data"] = SERIALIZER

    def dumps(self, obj: Any) -> bytes:
        blobs: list[bytes] = []
        tree = json.dumps(_encode(obj, blobs)).encode()
        parts = [FORMAT, struct.pack("<QQ", len(tree), len(blobs)), tree]
        for b in blobs:
            parts += [struct.pack("<Q", len(b)), b]
        return base64.b64encode(b"".join(parts))  # Prefect embeds it in a JSON record: text, as its pickles are

    def loads(self, blob: bytes) -> Any:
        blob = base64.b64decode(blob, validate=True)
        if not blob.startswith(FORMAT):
            raise ValueError("synthface-data: not a synthface-data result")
        pos = len(FORMAT)
        n_tree, n_blobs = struct.unpack_from("<QQ", blob, pos)
        pos += 16
        tree = json.loads(blob[pos:pos + n_tree])
        pos += n_tree
        blobs = []
        for _ in range(n_blobs):
            (n,) = struct.unpack_from("<Q", blob, pos)
            blobs.append(blob[pos + 8:pos + 8 + n])
            pos += 8 + n
        if pos != len(blob):
            raise ValueError("synthface-data: truncated or trailing bytes")
        return _decode(tree, blobs)
