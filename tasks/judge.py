"""Independent identity judge: dlib's pretrained ResNet (128-d, CC0) from the face-recognition-models
wheel, run by its PyTorch port. Never used in a training loss nor in guidance: it only measures.

    judge = DlibJudge();  d = judge.describe_all(aligned_uint8_nhwc)   # N x 128 raw descriptors
    u = centred_unit(d, reference_mean)                                 # cosine geometry for the metrics
Its same-person threshold is calibrated on held-out real pairs (evaluate stage); dlib documents a
Euclidean distance of 0.6 on raw descriptors.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image

from models.dlib_resnet import describe as describe_chips, load_dlib_resnet


def _models_dir() -> Path:
    spec = importlib.util.find_spec("face_recognition_models")  # not imported: it needs pkg_resources
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("face_recognition_models is not installed (pip install face-recognition-models)")
    return Path(list(spec.submodule_search_locations)[0]) / "models"


class DlibJudge:
    """dlib's face ResNet through its PyTorch port (models/dlib_resnet.py: the same weights and descriptors to
    ~1e-6, batched; about 10x faster than the dlib-bin wheel, which is built without BLAS)."""

    def __init__(self, batch_size: int = 64):
        self.net, self.batch_size = load_dlib_resnet(_models_dir() / "dlib_face_recognition_resnet_model_v1.dat"), batch_size

    @staticmethod
    def chip(aligned: np.ndarray) -> np.ndarray:
        """An ArcFace-aligned crop resized to dlib's 150x150 chip (the crop already is aligned)."""
        return np.asarray(Image.fromarray(aligned).resize((150, 150), Image.BICUBIC))

    def describe(self, aligned: np.ndarray) -> np.ndarray:
        return self.describe_all([aligned])[0]

    def describe_all(self, images) -> np.ndarray:
        if not len(images):
            return np.zeros((0, 128))
        return describe_chips(self.net, np.stack([self.chip(np.asarray(im)) for im in images]), self.batch_size)


def centred_unit(desc: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Raw dlib descriptors sit in a narrow cone (different people at cosine ~0.92), so cosines are taken
    after subtracting a reference mean descriptor (the real training faces'): the r-ball and threshold
    metrics then mean for the judge what they mean for the encoder."""
    d = desc - mean
    return d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12)
