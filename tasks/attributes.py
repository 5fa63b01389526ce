"""Face attributes of the real training faces: head pose (yaw, pitch, roll) and, where an estimator is
plugged in, age. The align stage saves them as the attribute pool that ID3 conditions on and samples from.

    est = make_pose_estimator("auto", weights_dir, device)    # HopeNet if its weights are there, else PnP
    deg = est(aligned_uint8_NxHxWx3, landmarks_Nx5x2, image_sizes)   # N x 3 degrees (yaw, pitch, roll)
    s = normalise(deg)                                         # N x 3 in [-1, 1] (90 degrees -> 1)
    age = make_age_estimator(None)                             # None: age is recorded as not estimated

Pose sources:
- "pnp": cv2.solvePnP of the 5 detector landmarks (eyes, nose tip, mouth corners) against a generic 3-D
  face template, pinhole camera with focal length = image width. Offline, no weights.
- "hopenet": facexlib's HopeNet (ResNet-50, 66 bins of 3 degrees) on the aligned crop, when
  `weights_dir/headpose_hopenet.pth` exists; loaded with torch.load(weights_only=True).
PnP convention: yaw > 0 the subject turns to the image's left, pitch > 0 looks down, roll > 0 clockwise
in the image. HopeNet keeps its own (300W-LP) signs; one run's pool comes from one source (recorded in
attributes.json), and the generator only needs yaw and roll to change sign under a horizontal flip.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch
from torch.nn import functional as F

HOPENET_FILE = "headpose_hopenet.pth"
# generic 3-D positions (arbitrary units, camera frame: x right, y down, z away from the camera) of the
# 5 landmarks in detector order: image-left eye, image-right eye, nose tip, image-left and right mouth corners
TEMPLATE_3D = np.array([[-165.0, -170.0, 135.0], [165.0, -170.0, 135.0], [0.0, 0.0, 0.0],
                        [-150.0, 150.0, 125.0], [150.0, 150.0, 125.0]])


def rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Camera-frame rotation for (yaw, pitch, roll) in degrees, applied as R = Rz(roll) Rx(pitch) Ry(yaw)."""
    y, p, r = np.radians([yaw, pitch, roll])
    ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    rx = np.array([[1, 0, 0], [0, np.cos(p), -np.sin(p)], [0, np.sin(p), np.cos(p)]])
    rz = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]])
    return rz @ rx @ ry


def euler(R: np.ndarray) -> tuple[float, float, float]:
    """Inverse of `rotation`: (yaw, pitch, roll) in degrees."""
    pitch = np.degrees(np.arcsin(np.clip(R[2, 1], -1, 1)))
    yaw = np.degrees(np.arctan2(-R[2, 0], R[2, 2]))
    roll = np.degrees(np.arctan2(-R[0, 1], R[1, 1]))
    return float(yaw), float(pitch), float(roll)


def camera(width: float, height: float) -> np.ndarray:
    return np.array([[width, 0, width / 2], [0, width, height / 2], [0, 0, 1]], dtype=np.float64)


def pose_pnp(landmarks: np.ndarray, width: float, height: float) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees from 5 landmarks (pixel coordinates of an image width x height)."""
    pts = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    K = camera(width, height)
    # start in front of the camera at a distance that matches the eye spacing, so the solver never flips
    iod = max(np.linalg.norm(pts[1] - pts[0]), 1e-6)
    z0 = width * (TEMPLATE_3D[1, 0] - TEMPLATE_3D[0, 0]) / iod
    rvec, tvec = np.zeros((3, 1)), np.array([[0.0], [0.0], [z0]])
    ok, rvec, tvec = cv2.solvePnP(TEMPLATE_3D, pts, K, None, rvec, tvec, useExtrinsicGuess=True, flags=cv2.SOLVEPNP_ITERATIVE)
    if not ok:
        raise ValueError("solvePnP found no pose for these landmarks")
    return euler(cv2.Rodrigues(rvec)[0])


def project(yaw: float, pitch: float, roll: float, width: float = 250, height: float = 250, distance: float = 2500) -> np.ndarray:
    """The template's 5 landmarks as seen at a known pose (for tests and sanity checks)."""
    X = TEMPLATE_3D @ rotation(yaw, pitch, roll).T + [0, 0, distance]
    uv = X @ camera(width, height).T
    return uv[:, :2] / uv[:, 2:]


def normalise(deg: np.ndarray) -> np.ndarray:
    """Degrees -> [-1, 1] conditioning values (90 degrees, a full profile, maps to 1)."""
    return np.clip(np.asarray(deg, dtype=np.float64) / 90.0, -1, 1)


class PnPPose:
    source = "pnp"

    def __call__(self, faces: np.ndarray, landmarks: np.ndarray, sizes: np.ndarray) -> np.ndarray:
        # no landmarks (a pre-aligned face the detector did not find): the pose is unknown, never guessed
        return np.array([pose_pnp(lm, w, h) if np.isfinite(lm).all() else (np.nan,) * 3
                         for lm, (w, h) in zip(landmarks, sizes)]).reshape(-1, 3)


class HopeNetPose:
    """facexlib HopeNet on aligned face crops; weights from a local file, never downloaded here."""
    source = "hopenet"

    def __init__(self, weights: Path, device: str = "cpu"):
        from facexlib.headpose.hopenet_arch import HopeNet
        state = torch.load(weights, map_location="cpu", weights_only=True)
        state = state.get("params", state) if isinstance(state, dict) else state
        self.model = HopeNet("resnet", [3, 4, 6, 3], 66)
        self.model.load_state_dict(state, strict=True)
        self.model.eval().requires_grad_(False).to(device)
        self.device = device

    @torch.no_grad()
    def __call__(self, faces: np.ndarray, landmarks=None, sizes=None, batch_size: int = 64) -> np.ndarray:
        out = []
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        for i in range(0, len(faces), batch_size):
            x = torch.as_tensor(faces[i:i + batch_size]).permute(0, 3, 1, 2).float() / 255
            x = F.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False)
            yaw, pitch, roll = self.model(((x - mean) / std).to(self.device))
            out.append(torch.stack([yaw, pitch, roll], 1).float().cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, 3))


def make_pose_estimator(kind: str, weights_dir: Path | None, device: str = "cpu"):
    """kind: "pnp", "hopenet" (its weights file must exist) or "auto" (HopeNet when present, else PnP)."""
    weights = Path(weights_dir) / HOPENET_FILE if weights_dir is not None else None
    if kind == "hopenet" or (kind == "auto" and weights is not None and weights.is_file()):
        if weights is None or not weights.is_file():
            raise FileNotFoundError(f"align.pose = hopenet needs {weights}; put facexlib's {HOPENET_FILE} there or use pnp/auto")
        return HopeNetPose(weights, device)
    if kind in ("pnp", "auto"):
        return PnPPose()
    raise ValueError(f"unknown pose estimator {kind!r}: use auto, pnp or hopenet")


def make_age_estimator(spec: str | None) -> Callable[[np.ndarray], np.ndarray] | None:
    """None when no estimator is configured (age is then recorded as not estimated, never guessed).
    Otherwise "package.module:callable", a function from uint8 N x H x W x 3 aligned faces to N ages in years."""
    if not spec:
        return None
    mod, _, name = spec.partition(":")
    if not name:
        raise ValueError(f"align.age_estimator {spec!r}: expected 'module:callable'")
    return getattr(importlib.import_module(mod), name)
