"""Face detection, 5 landmarks and similarity warp to the 112x112 ArcFace template.

Detectors: MTCNN (weights inside the facenet-pytorch wheel) or facexlib RetinaFace (needs
`detection_Resnet50_Final.pth` in `align.weights_dir`; nothing is downloaded). Every input ends either
accepted (an aligned JPEG plus its record) or rejected with a reason; nothing raises for bad images.

    det = make_detector("mtcnn")
    accepted, rejected = align_items([(key, source, raw_bytes, meta), ...], det, params["align"])
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .attributes import PnPPose, normalise
from .io import sha256_bytes

# insightface's ArcFace template for 112x112 crops: left eye, right eye, nose, left/right mouth corner
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float64)
RETINAFACE_WEIGHTS = "detection_Resnet50_Final.pth"


class MTCNNDetector:
    name = "mtcnn"

    def __init__(self, device: str = "cpu"):
        from facenet_pytorch import MTCNN  # weights ship inside the wheel
        self.net = MTCNN(keep_all=True, device=device, post_process=False)

    def detect(self, images: list[np.ndarray]) -> list[list[tuple[np.ndarray, float, np.ndarray]]]:
        """images: HxWx3 uint8 RGB of one size -> per image a list of (box[4], score, landmarks[5,2])."""
        with torch.inference_mode():
            boxes, probs, points = self.net.detect(np.stack(images), landmarks=True)
        out = []
        for b, p, pts in zip(boxes, probs, points):
            if b is None:
                out.append([])
            else:
                out.append([(np.asarray(bb, float), float(pp), np.asarray(pt, float)) for bb, pp, pt in zip(b, p, pts)])
        return out


class RetinaFaceDetector:
    name = "retinaface"

    def __init__(self, weights_dir: str | Path, device: str = "cpu"):
        path = Path(weights_dir) / RETINAFACE_WEIGHTS
        if not path.is_file():
            raise FileNotFoundError(f"{path}: RetinaFace weights not found (put facexlib's {RETINAFACE_WEIGHTS} "
                                    f"in align.weights_dir, or use align.detector: mtcnn)")
        from facexlib.detection.retinaface import RetinaFace
        self.net = RetinaFace(network_name="resnet50", half=False, device=torch.device(device))
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = {k.removeprefix("module."): v for k, v in state.items()}
        self.net.load_state_dict(state, strict=True)
        self.net.eval()

    def detect(self, images):
        out = []
        for im in images:
            with torch.inference_mode():
                dets = self.net.detect_faces(im[:, :, ::-1].copy(), conf_threshold=0.5)  # facexlib wants BGR
            out.append([(d[:4].astype(float), float(d[4]), d[5:15].reshape(5, 2).astype(float)) for d in dets])
        return out


def make_detector(kind: str, weights_dir: str | Path = "weights", device: str = "cpu"):
    if kind == "mtcnn":
        return MTCNNDetector(device)
    if kind == "retinaface":
        return RetinaFaceDetector(weights_dir, device)
    raise ValueError(f"align.detector: unknown detector {kind!r}")


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (Umeyama, no reflection) mapping src points onto dst; 2x3 matrix."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s_c, d_c = src - mu_s, dst - mu_d
    cov = d_c.T @ s_c / len(src)
    U, S, Vt = np.linalg.svd(cov)
    D = np.diag([1.0, np.sign(np.linalg.det(U @ Vt))])
    R = U @ D @ Vt
    scale = np.trace(np.diag(S) @ D) / s_c.var(0).sum()
    t = mu_d - scale * R @ mu_s
    return np.hstack([scale * R, t[:, None]])


def warp(image: np.ndarray, landmarks: np.ndarray, size: int = 112) -> np.ndarray:
    M = similarity_transform(landmarks, ARCFACE_TEMPLATE * (size / 112.0))
    return cv2.warpAffine(image, M, (size, size), flags=cv2.INTER_LINEAR, borderValue=0)


def decode(raw: bytes) -> tuple[np.ndarray | None, str, str]:
    """bytes -> (RGB uint8 array, source mode, '') or (None, '', reason)."""
    if not raw:
        return None, "", "empty file"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(raw))
            mode = im.mode
            im.load()
            im = ImageOps.exif_transpose(im)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        return None, "", f"decompression bomb: {e}"
    except UnidentifiedImageError:
        return None, "", "not a decodable image"
    except (OSError, SyntaxError, ValueError) as e:
        return None, "", f"unreadable image: {e}"
    if min(im.size) < 16:
        return None, mode, f"image too small ({im.size[0]}x{im.size[1]})"
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        bg = Image.new("RGB", im.size, (255, 255, 255))  # composite transparency on white
        im = Image.alpha_composite(bg.convert("RGBA"), im.convert("RGBA"))
    if im.mode.startswith("I;16") or im.mode == "I":
        arr = np.asarray(im, dtype=np.float64)
        im = Image.fromarray(np.clip(arr / max(arr.max(), 1) * 255, 0, 255).astype(np.uint8))
    return np.asarray(im.convert("RGB")), mode, ""


def pick_face(faces, shape, min_score: float):
    """The confident face nearest the image centre (LFW-style photos are centred on their subject)."""
    h, w = shape[:2]
    good = [f for f in faces if f[1] >= min_score]
    if not good:
        return None
    return min(good, key=lambda f: ((f[0][0] + f[0][2]) / 2 - w / 2) ** 2 + ((f[0][1] + f[0][3]) / 2 - h / 2) ** 2)


def align_generated(images: list[np.ndarray], detector, min_score: float = 0.9, size: int = 112) -> tuple[list[np.ndarray], list[bool]]:
    """Generated faces through the real data's alignment (ID-Booth's outputs): each image, upsampled to `size`
    so small renders reach the detector's minimum face, is warped to the ArcFace template when a confident
    face is found; otherwise it is kept resized whole (the generator learnt the aligned frame) and flagged."""
    big = [np.asarray(Image.fromarray(a).resize((size, size), Image.BICUBIC)) if a.shape[0] != size else a for a in images]
    out, found = [], []
    for img, faces in zip(big, detector.detect(big) if big else []):
        face = pick_face(faces, img.shape, min_score)
        out.append(warp(img, face[2], size) if face is not None else img)
        found.append(face is not None)
    return out, found


def encode_jpeg(arr: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality, subsampling=0)
    return buf.getvalue()


def align_items(items: list[tuple[str, str, bytes, dict]], detector, p: dict, pose=None,
                age=None) -> tuple[list[dict], list[dict]]:
    """Align (key, source, raw bytes, meta) items; returns (accepted records with 'jpg' bytes, rejects).
    Accepted records carry the head pose (`pose`: a tasks.attributes estimator, PnP by default) in degrees
    (yaw_deg, ...) and normalised to [-1, 1] (yaw, ...), and `age` in years when an estimator is given."""
    pose = pose if pose is not None else PnPPose()
    accepted, rejected, decoded = [], [], []
    for key, source, raw, meta in items:
        arr, mode, reason = decode(raw)
        if arr is None:
            rejected.append({"key": key, "source": source, "reason": reason, **meta})
        else:
            decoded.append((key, source, arr, mode, meta))
    # batch images of equal size through the detector
    by_size: dict[tuple, list] = {}
    for d in decoded:
        by_size.setdefault(d[2].shape, []).append(d)
    results = {}
    for group in by_size.values():
        for i in range(0, len(group), p["batch_size"]):
            part = group[i:i + p["batch_size"]]
            try:
                faces = detector.detect([d[2] for d in part])
            except Exception as e:  # a detector failure on one batch must not stop the stage
                faces = [RuntimeError(f"detector error: {e}")] * len(part)
            for d, f in zip(part, faces):
                results[d[0]] = f
    for key, source, arr, mode, meta in decoded:
        faces = results[key]
        if isinstance(faces, Exception):
            rejected.append({"key": key, "source": source, "reason": str(faces), **meta})
            continue
        face = pick_face(faces, arr.shape, p["min_score"])
        if face is None:
            best = max((f[1] for f in faces), default=None)
            reason = "no face detected" if best is None else f"no face above min_score (best {best:.3f})"
            rejected.append({"key": key, "source": source, "reason": reason, **meta})
            continue
        box, score, lm = face
        crop = warp(arr, lm, p["output_size"])
        jpg = encode_jpeg(crop, p["jpeg_quality"])
        accepted.append({"key": key, "source": source, "source_mode": mode, "score": score,
                         "box": [float(v) for v in box], "landmarks": [float(v) for v in lm.ravel()],
                         "sha256": sha256_bytes(jpg), "jpg": jpg, "_crop": crop, "_size": arr.shape[1::-1], **meta})
    add_attributes(accepted, pose, age)
    return accepted, rejected


def add_attributes(accepted: list[dict], pose, age) -> None:
    """Head pose (degrees and normalised) and age for accepted records holding `_crop` and `_size`."""
    if not accepted:
        return
    crops = np.stack([a.pop("_crop") for a in accepted])
    sizes = np.array([a.pop("_size") for a in accepted], dtype=np.float64)
    deg = pose(crops, np.array([a["landmarks"] for a in accepted], dtype=np.float64).reshape(-1, 5, 2), sizes)
    ages = np.asarray(age(crops), dtype=np.float64) if age is not None else np.full(len(accepted), np.nan)
    for a, d, n, y in zip(accepted, deg, normalise(deg), ages):
        a.update({"yaw": float(n[0]), "pitch": float(n[1]), "roll": float(n[2]), "yaw_deg": float(d[0]),
                  "pitch_deg": float(d[1]), "roll_deg": float(d[2]), "pose_source": pose.source if np.isfinite(d).all() else "none",
                  "age": float(y) if np.isfinite(y) else None})


def square_crop(arr: np.ndarray, size: int) -> np.ndarray:
    """A pre-aligned crop at size x size. A non-square one (SphereFace's 112x96) is padded with black on
    its short side, centred, never stretched: the ArcFace template is the 96x112 one shifted 8 px in x."""
    h, w = arr.shape[:2]
    if h != w:
        d = abs(h - w)
        pad = ((0, 0), (d // 2, d - d // 2)) if w < h else ((d // 2, d - d // 2), (0, 0))
        arr = np.pad(arr, (*pad, (0, 0)))
    return arr if arr.shape[0] == size else cv2.resize(arr, (size, size), interpolation=cv2.INTER_AREA)


def exif_rotated(raw: bytes) -> bool:
    """True when the file's EXIF orientation asks viewers to rotate or flip it (PIL and OpenCV disagree on it)."""
    try:
        return Image.open(io.BytesIO(raw)).getexif().get(0x0112, 1) not in (0, 1)
    except Exception:  # noqa: BLE001  (decode() already vetted the file; unreadable EXIF means none applies)
        return False


def prealigned_items(items: list[tuple[str, str, bytes, dict]], detector, p: dict, pose=None,
                     age=None) -> tuple[list[dict], list[dict]]:
    """Like align_items for inputs that already are ArcFace-aligned crops (CASIA-WebFace's
    faces_webface_112x112, MS1M): no detection-based crop or rejection - only undecodable files are
    rejected. Crops of another size are padded square and resized (square_crop). For the PnP pose, landmarks are measured on the crop when a detector is given and finds a
    face; otherwise the pose is left unknown (nan, pose_source 'none'). HopeNet needs no landmarks."""
    pose = pose if pose is not None else PnPPose()
    accepted, rejected = [], []
    size = p["output_size"]
    for key, source, raw, meta in items:
        arr, mode, reason = decode(raw)
        if arr is None:
            rejected.append({"key": key, "source": source, "reason": reason, **meta})
            continue
        crop = square_crop(arr, size)
        # the file's own bytes only when they already are the crop every reader decodes alike
        as_is = arr.shape[:2] == (size, size) and raw[:2] == b"\xff\xd8" and mode == "RGB" and not exif_rotated(raw)
        jpg = raw if as_is else encode_jpeg(crop, p["jpeg_quality"])
        accepted.append({"key": key, "source": source, "source_mode": mode, "score": None, "box": None,
                         "landmarks": [float("nan")] * 10, "sha256": sha256_bytes(jpg), "jpg": jpg, "_crop": crop,
                         "_size": (size, size), **meta})
    if detector is not None and pose.source == "pnp":
        for i in range(0, len(accepted), p["batch_size"]):
            part = accepted[i:i + p["batch_size"]]
            try:
                found = detector.detect([a["_crop"] for a in part])
            except Exception:  # noqa: BLE001  (landmarks only feed the pose: unknown beats a lost image)
                found = [[]] * len(part)
            for a, faces in zip(part, found):
                f = pick_face(faces, a["_crop"].shape, 0.0)
                if f is not None:
                    a["landmarks"] = [float(v) for v in f[2].ravel()]
    add_attributes(accepted, pose, age)
    return accepted, rejected


def reject_duplicates(accepted: list[dict], rejected: list[dict]) -> list[dict]:
    """The same photo twice (equal input bytes, `input_sha256`): among training faces the first in key order
    stays and every other copy moves to `rejected` as 'duplicate' with `duplicate_of`; a training photo that
    is also an evaluation photo is rejected too (it would leak into the benchmark). Eval faces all stay:
    the pairs list names them."""
    digest = lambda a: a.get("input_sha256") or a["sha256"]  # noqa: E731
    first = {digest(a): a["key"] for a in sorted(accepted, key=lambda a: a["key"]) if a["split"] == "eval"}
    kept = []
    for a in sorted(accepted, key=lambda a: (a["split"] != "eval", a["key"])):
        if a["split"] == "train" and digest(a) in first:
            rejected.append({"key": a["key"], "source": a["source"], "reason": "duplicate", "duplicate_of": first[digest(a)],
                             **{k: a[k] for k in ("split", "identity", "fold", "input_sha256") if k in a}})
            continue
        first.setdefault(digest(a), a["key"])
        kept.append(a)
    return kept
