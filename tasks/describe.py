"""Stream a set of face shards (or a .bin) through a describer - any function from uint8 NHWC faces to
embeddings: the identity encoder, the dlib judge - and optionally the aligner's re-detection.

    s = embed_set(describe, shards, keys=None, detector=None, grid_ids=())   # {"keys", "emb", "labels", "poses", ...}
    low = embed_set(describe, shards, resolution=32)                         # the faces downsampled to 32 px first
    e = embed_bin(describe, bins)                                            # one row per .bin image slot
    px = smallest_side(shards)                                               # image headers only
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

from .benchmarks import decoded_batches
from .quality import at_resolution, face_poses
from .shards import iter_images, read_tar


def embed_set(describe, shards, keys=None, detector=None, grid_ids=(), resolution: int | None = None) -> dict:
    """Stream a set once: keys, embeddings (none when describe is None) and labels, head poses when a
    detector is given (nan: no face found), and the images of grid_ids; nothing else stays decoded.
    resolution: every face is first downsampled to it (quality.at_resolution), then described and detected
    as images of that size are."""
    out = {"keys": [], "emb": [], "labels": [], "poses": [], "grid": [], "grid_labels": []}
    for ks, images, cls in iter_images(shards, keys):
        if resolution:
            images = at_resolution(images, resolution)
        out["keys"].append(np.array(ks, dtype=object)); out["labels"].append(cls)
        out["emb"].append(describe(images) if describe is not None else np.zeros((len(images), 0)))
        if detector is not None:
            out["poses"].append(face_poses(images, detector))
        sel = np.isin(cls, list(grid_ids))
        out["grid"].append(images[sel]); out["grid_labels"].append(cls[sel])
    empty = {"keys": (0,), "emb": (0, 1), "labels": (0,), "poses": (0, 3), "grid": (0, 1, 1, 3), "grid_labels": (0,)}
    res = {k: np.concatenate(v) if v else np.zeros(empty[k]) for k, v in out.items()}
    res["keys"] = res["keys"].astype(str)
    return res


def embed_bin(describe, bins: list[bytes]) -> np.ndarray:
    """Embeddings of every image slot of a .bin; repeated images are described once."""
    uniq = list(dict.fromkeys(bins))
    index = {b: i for i, b in enumerate(uniq)}
    emb = np.concatenate([describe(batch) for batch in decoded_batches(uniq)])
    return emb[[index[b] for b in bins]]


def smallest_side(shards) -> int:
    """The smallest image side in a set (image headers only, nothing decoded): the generated images'
    resolution, also in ID-Booth's augmented set, whose real faces stay 112 px; 0 for an empty set."""
    sides = [min(Image.open(io.BytesIO(s.get("jpg", s.get("png")))).size) for sh in shards for s in read_tar(sh)]
    return min(sides, default=0)
