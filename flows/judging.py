"""Content-cached Prefect tasks around the dlib judge and the aligner's re-detection,
shared by the package stage (privacy audit, face filter) and the evaluate stage (quality metrics): a set
described once is reused by every later stage and experiment whose inputs have the same bytes.

    d = judge_set(shards, keys)   # {"keys", "emb": raw dlib descriptors, "labels"}
    f = detect_set(shards)        # {"keys", "labels", "poses": N x 3, nan where no face is found}
    d32 = judge_set(shards, keys, resolution=32)   # the faces downsampled to 32 px first (both tasks)
    e = judge_bin(path)           # raw descriptors of every image slot of an insightface .bin
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from tasks.align import make_detector
from tasks.benchmarks import read_bin
from tasks.describe import embed_bin, embed_set
from tasks.judge import DlibJudge

from .caching import cached_task
from .common import device

_MODELS: dict = {}


def _judge() -> DlibJudge:
    if "judge" not in _MODELS:
        _MODELS["judge"] = DlibJudge()
    return _MODELS["judge"]


def _detector():
    if "detector" not in _MODELS:
        _MODELS["detector"] = make_detector("mtcnn", device=device())
    return _MODELS["detector"]


@cached_task()
def judge_set(shards: list[Path], keys: list[str], resolution: int | None = None) -> dict:
    """dlib descriptors of the given faces, cached on the shards' bytes; with resolution,
    of the faces downsampled to it (tasks/describe.embed_set)."""
    return embed_set(_judge().describe_all, shards, set(keys), resolution=resolution)


@cached_task()
def detect_set(shards: list[Path], resolution: int | None = None) -> dict:
    """Re-detect every face of a set with MTCNN and estimate its head pose from the 5 landmarks; with
    resolution, of the faces downsampled to it (then upsampled to the detector's 112 px as any small face)."""
    return embed_set(None, shards, None, _detector(), resolution=resolution)


@cached_task()
def judge_bin(path: Path) -> np.ndarray:
    return embed_bin(_judge().describe_all, read_bin(path)[0])
