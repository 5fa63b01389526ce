"""Face-verification benchmarks in insightface's `.bin` format: read safely, build from a pairs list.

A `.bin` is a pickle of `(bins, issame_list)`: 2N encoded images (JPEG/PNG bytes, pairs adjacent) and N
booleans. Pickles can run code, so they are read with a restricted unpickler that builds only bytes,
lists, tuples and booleans; any global (os.system, numpy, ...) is refused with UnsafeBenchmarkFile.

    bins, issame = read_bin("data/benchmarks/cfp_fp.bin")      # list[bytes], np.ndarray[bool]
    write_bin("lfw_heldout.bin", bins, issame)                   # atomic, protocol 4
    bins, issame = build_bin(pairs, image_bytes_by_key)          # pairs: (key_a, key_b, issame) rows
    python -m flows build-bin --pairs pairs.txt --images lfw_aligned/ --out lfw.bin   # LFW-layout folders
"""
from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Iterable, Iterator, Mapping

import numpy as np
from PIL import Image

from .io import atomic_path
from .shards import decode_image

STANDARD = ("lfw", "cfp_fp", "agedb_30", "calfw", "cplfw")  # the papers' five, in their column order
LFW_PEOPLE = ("lfw", "calfw", "cplfw")  # built from LFW's people: not held out from a model trained on LFW
HELDOUT = "lfw_heldout"                 # built by the evaluate stage; a user file may not take its name
IMAGE_SIZE = 112


class UnsafeBenchmarkFile(pickle.UnpicklingError):
    pass


def _latin1_encode(text, encoding="latin1"):
    # protocol-2 pickles written by Python 3 spell each bytes object as _codecs.encode(str, "latin1")
    if not isinstance(text, str) or encoding != "latin1":
        raise UnsafeBenchmarkFile(f"_codecs.encode is allowed only as (str, 'latin1'), got {type(text).__name__}, {encoding!r}")
    return text.encode("latin1")


class RestrictedUnpickler(pickle.Unpickler):
    """Builds only the pickle opcodes' own types (bytes, str, lists, tuples, bools, ints); no globals."""

    def find_class(self, module, name):
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode
        raise UnsafeBenchmarkFile(f"refused to load global {module}.{name}: a benchmark .bin holds only "
                                  "image bytes and booleans, so this file is malformed or malicious")

    def persistent_load(self, pid):
        raise UnsafeBenchmarkFile("refused a persistent id: not part of the .bin format")


def read_bin(path: str | Path) -> tuple[list[bytes], np.ndarray]:
    """(encoded images, issame) of an insightface .bin; raises UnsafeBenchmarkFile / ValueError on bad files."""
    path = Path(path)
    with open(path, "rb") as f:
        try:
            obj = RestrictedUnpickler(f, encoding="bytes").load()
        except UnsafeBenchmarkFile as e:
            raise UnsafeBenchmarkFile(f"{path}: {e}") from None
        except Exception as e:  # any malformed opcode stream (BUILD on a list, bad memo, deep nesting...)
            raise ValueError(f"{path}: not a readable .bin pickle ({type(e).__name__}: {e})") from None
    if not (isinstance(obj, (tuple, list)) and len(obj) == 2 and isinstance(obj[0], list) and isinstance(obj[1], list)):
        raise ValueError(f"{path}: expected (list of image bytes, list of booleans), got {type(obj).__name__}")
    bins, issame = obj
    if not all(isinstance(b, bytes) for b in bins):
        raise ValueError(f"{path}: every image must be encoded bytes")
    if not all(isinstance(s, bool) or s in (0, 1) for s in issame):
        raise ValueError(f"{path}: issame must hold booleans")
    if len(bins) != 2 * len(issame):
        raise ValueError(f"{path}: {len(bins)} images for {len(issame)} pairs (expected {2 * len(issame)})")
    return bins, np.asarray(issame, dtype=bool)


def write_bin(path: str | Path, bins: list[bytes], issame: Iterable[bool]) -> None:
    issame = [bool(s) for s in issame]
    if len(bins) != 2 * len(issame):
        raise ValueError(f"{len(bins)} images for {len(issame)} pairs")
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        pickle.dump((list(bins), issame), f, protocol=4)


def build_bin(pairs: Iterable[tuple[str, str, bool]], images: Mapping[str, bytes]) -> tuple[list[bytes], list[bool]]:
    """Pairs adjacent, in the given order; a key with no image is an error (never a silent drop)."""
    bins, issame = [], []
    for a, b, same in pairs:
        missing = [k for k in (a, b) if k not in images]
        if missing:
            raise KeyError(f"no aligned image for {missing}")
        bins += [images[a], images[b]]
        issame.append(bool(same))
    return bins, issame


def decode(data: bytes, size: int = IMAGE_SIZE) -> np.ndarray:
    """uint8 HxWx3 RGB at size x size (insightface resizes any other size the same way)."""
    im = decode_image(data)
    return im if im.shape[:2] == (size, size) else np.asarray(Image.fromarray(im).resize((size, size), Image.BILINEAR))


def decoded_batches(bins: list[bytes], batch_size: int = 256, size: int = IMAGE_SIZE) -> Iterator[np.ndarray]:
    """Stream decoded batches so a 12,000-image benchmark is never all decoded at once."""
    for i in range(0, len(bins), batch_size):
        yield np.stack([decode(b, size) for b in bins[i:i + batch_size]])


def verify_images(path: str | Path, bins: list[bytes], max_side: int = 4096) -> None:
    """Decode every image of a .bin once, so a bad one is an error naming the file and its slot, not a crash deep
    in a model; sides above max_side are refused unread (a benchmark face is ~112 px)."""
    for i, b in enumerate(bins):
        try:
            with Image.open(io.BytesIO(b)) as im:
                if max(im.size) > max_side:
                    raise ValueError(f"{im.size[0]}x{im.size[1]} px, above {max_side}")
                im.load()
        except Exception as e:  # PIL raises many types (UnidentifiedImageError, OSError, DecompressionBombError...)
            raise ValueError(f"{path}: image {i} (pair {i // 2}) does not decode ({type(e).__name__}: "
                             f"{' '.join(str(e).split())})") from None


def find_bins(folder: str | Path) -> dict[str, Path]:
    """Every *.bin under folder, named by file stem; the five standard ones first, in the papers' order. A *.bin
    that is not a regular file (a FIFO would block the reader forever, a folder cannot be read) is an error."""
    folder = Path(folder)
    found = {p.stem: p for p in sorted(folder.glob("*.bin"))} if folder.is_dir() else {}
    for p in found.values():
        if not p.is_file():
            raise ValueError(f"{p}: not a regular file (a benchmark .bin must be one)")
    if HELDOUT in found:
        raise ValueError(f"{found[HELDOUT]}: the name {HELDOUT}.bin is reserved for the held-out pairs the evaluate stage builds")
    return {k: found[k] for k in [s for s in STANDARD if s in found] + [s for s in found if s not in STANDARD]}
