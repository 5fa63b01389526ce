"""align on real LFW photos plus a corpus of bad inputs: every input ends accepted or rejected with a reason."""
import io
import zipfile

import numpy as np
import pytest
from PIL import Image

from tasks.align import ARCFACE_TEMPLATE, align_items, make_detector, similarity_transform

P = {"min_score": 0.9, "output_size": 112, "jpeg_quality": 95, "batch_size": 8}


@pytest.fixture(scope="module")
def detector():
    return make_detector("mtcnn")


def _png(arr, mode=None):
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, format="PNG")
    return buf.getvalue()


def test_similarity_transform_recovers_a_known_warp():
    M = np.array([[0.8, -0.3, 12.0], [0.3, 0.8, -4.0]])
    src = ARCFACE_TEMPLATE
    dst = src @ M[:, :2].T + M[:, 2]
    np.testing.assert_allclose(similarity_transform(src, dst), M, atol=1e-9)


def test_real_faces_and_bad_inputs(lfw_files, detector):
    zf = zipfile.ZipFile(lfw_files / "lfw-deepfunneled.zip")
    members = [m for m in zf.namelist() if m.endswith(".jpg")][:6]
    real = [zf.read(m) for m in members]
    rgb = np.asarray(Image.open(io.BytesIO(real[0])).convert("RGB"))
    gray = _png(np.asarray(Image.fromarray(rgb).convert("L")))
    rgba = _png(np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)]))
    items = [(f"real{i}", m, b, {}) for i, (m, b) in enumerate(zip(members, real))]
    items += [("truncated", "t.jpg", real[1][: len(real[1]) // 3], {}), ("empty", "e.jpg", b"", {}),
              ("noise", "n.jpg", np.random.default_rng(0).bytes(5000), {}),
              ("noface", "f.png", _png(np.full((200, 200, 3), 128, np.uint8)), {}),
              ("tiny", "x.png", _png(np.zeros((1, 1, 3), np.uint8)), {}),
              ("gray", "g.png", gray, {}), ("rgba", "a.png", rgba, {})]
    acc, rej = align_items(items, detector, P)
    assert len(acc) + len(rej) == len(items)
    reasons = {r["key"]: r["reason"] for r in rej}
    assert {"truncated", "empty", "noise", "noface", "tiny"} <= set(reasons)
    assert reasons["empty"] == "empty file" and reasons["noface"] == "no face detected"
    assert "too small" in reasons["tiny"] and "unreadable" in reasons["truncated"]
    ok = {a["key"]: a for a in acc}
    assert {f"real{i}" for i in range(6)} | {"gray", "rgba"} <= set(ok)  # colour-converted, not lost
    assert ok["gray"]["source_mode"] == "L" and ok["rgba"]["source_mode"] == "RGBA"
    a = ok["real0"]
    crop = np.asarray(Image.open(io.BytesIO(a["jpg"])))
    assert crop.shape == (112, 112, 3) and a["score"] > 0.9 and len(a["landmarks"]) == 10
    assert all(-1 <= a[k] <= 1 for k in ("yaw", "pitch", "roll"))
    # the warped landmarks land on the ArcFace template
    M = similarity_transform(np.array(a["landmarks"]).reshape(5, 2), ARCFACE_TEMPLATE)
    warped = np.array(a["landmarks"]).reshape(5, 2) @ M[:, :2].T + M[:, 2]
    assert np.abs(warped - ARCFACE_TEMPLATE).max() < 8


def test_retinaface_loads_from_a_weights_folder(tmp_path, lfw_files):
    """facexlib ships no weights: a weights file made here (random init, facexlib's layout) must load
    with weights_only and run; a missing file is a clear error naming it."""
    import torch
    from facexlib.detection.retinaface import RetinaFace

    from tasks.align import RETINAFACE_WEIGHTS
    with pytest.raises(FileNotFoundError, match=RETINAFACE_WEIGHTS):
        make_detector("retinaface", tmp_path)
    torch.manual_seed(0)
    net = RetinaFace(network_name="resnet50", half=False, device=torch.device("cpu"))
    torch.save({f"module.{k}": v for k, v in net.state_dict().items()}, tmp_path / RETINAFACE_WEIGHTS)
    det = make_detector("retinaface", tmp_path)
    zf = zipfile.ZipFile(lfw_files / "lfw-deepfunneled.zip")
    img = np.asarray(Image.open(io.BytesIO(zf.read("lfw-deepfunneled/Aaron_Eckhart/Aaron_Eckhart_0001.jpg"))).convert("RGB"))
    out = det.detect([img])
    assert len(out) == 1 and all(len(f[0]) == 4 and f[2].shape == (5, 2) for f in out[0])
