"""Independent identity judge: dlib's pretrained ResNet (128-d, CC0) from the face-recognition-models
wheel. Not differentiable, so it only measures: never used in a training loss.

    judge = DlibJudge();  d = judge.describe(aligned_uint8_hwc)      # 128-d descriptor
    stats = identity_consistency(descriptors, identity_labels)
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image

from .identity import cos_to_centre

DLIB_SAME_DISTANCE = 0.6  # dlib's documented threshold: Euclidean distance below it = same person


def _models_dir() -> Path:
    spec = importlib.util.find_spec("face_recognition_models")  # not imported: it needs pkg_resources
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("face_recognition_models is not installed (pip install face-recognition-models)")
    return Path(list(spec.submodule_search_locations)[0]) / "models"


class DlibJudge:
    def __init__(self):
        import dlib
        self.rec = dlib.face_recognition_model_v1(str(_models_dir() / "dlib_face_recognition_resnet_model_v1.dat"))

    def describe(self, aligned: np.ndarray) -> np.ndarray:
        """Descriptor of an ArcFace-aligned crop, resized to dlib's 150x150 chip (the crop already is aligned)."""
        chip = np.ascontiguousarray(np.asarray(Image.fromarray(aligned).resize((150, 150), Image.BICUBIC)))
        return np.asarray(self.rec.compute_face_descriptor(chip), dtype=np.float64)

    def describe_all(self, images) -> np.ndarray:
        return np.stack([self.describe(im) for im in images]) if len(images) else np.zeros((0, 128))


def identity_consistency(desc: np.ndarray, identity: np.ndarray) -> dict:
    """Mean cosine to identity centre, and the share of same- / different-identity pairs dlib calls 'same'."""
    identity = np.asarray(identity)
    cos = cos_to_centre(desc / np.linalg.norm(desc, axis=1, keepdims=True), identity)
    d = np.sqrt(((desc[:, None] - desc[None]) ** 2).sum(-1))
    same = identity[:, None] == identity[None]
    off = ~np.eye(len(desc), dtype=bool)
    return {"mean_cos_to_centre": float(np.mean(cos)),
            "same_identity_verified": float((d[same & off] < DLIB_SAME_DISTANCE).mean()) if (same & off).any() else None,
            "different_identity_confused": float((d[~same] < DLIB_SAME_DISTANCE).mean()) if (~same).any() else None,
            "images": int(len(desc)), "identities": int(len(np.unique(identity)))}
