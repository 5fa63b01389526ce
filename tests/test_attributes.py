"""Head pose and the attribute estimators: PnP recovers known poses, behaves under a mirror on real LFW
faces, HopeNet loads from a weights folder (a file this test writes), age is absent unless plugged in."""
import io
import sys
import types
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from tasks.align import align_items, make_detector
from tasks.attributes import (HOPENET_FILE, HopeNetPose, PnPPose, make_age_estimator, make_pose_estimator, normalise,
                              pose_pnp, project)

P = {"min_score": 0.9, "output_size": 112, "jpeg_quality": 95, "batch_size": 8}


@pytest.mark.parametrize("pose", [(0, 0, 0), (25, 0, 0), (-40, 10, 5), (0, -20, 0), (10, 15, -20), (60, -5, 10)])
def test_pnp_recovers_known_poses(pose):
    got = pose_pnp(project(*pose), 250, 250)
    np.testing.assert_allclose(got, pose, atol=0.5)


def test_normalise_maps_degrees_to_unit_range():
    np.testing.assert_allclose(normalise([[90, -45, 0], [180, -200, 9]]), [[1, -0.5, 0], [1, -1, 0.1]])


def _faces(lfw_files, n=6):
    zf = zipfile.ZipFile(lfw_files / "lfw-deepfunneled.zip")
    names = sorted(m for m in zf.namelist() if m.endswith(".jpg"))[:n]
    return [(n_.replace("/", "_"), n_, zf.read(n_), {}) for n_ in names]


def _mirrored(items):
    out = []
    for key, src, raw, meta in items:
        buf = io.BytesIO()
        Image.open(io.BytesIO(raw)).transpose(Image.FLIP_LEFT_RIGHT).save(buf, format="JPEG", quality=95)
        out.append((key, src, buf.getvalue(), meta))
    return out


def test_real_faces_mirror_flips_yaw_and_roll(lfw_files):
    det = make_detector("mtcnn")
    items = _faces(lfw_files, 12)
    acc, rej = align_items(items, det, P)
    macc, _ = align_items(_mirrored(items), det, P)
    assert len(acc) + len(rej) == len(items) and len(acc) >= 10
    by_key = {a["key"]: a for a in macc}
    pairs = np.array([[a[f"{c}_deg"] for c in ("yaw", "pitch", "roll")] + [by_key[a["key"]][f"{c}_deg"] for c in ("yaw", "pitch", "roll")]
                      for a in acc])
    for a in acc:
        assert a["pose_source"] == "pnp" and a["age"] is None
        assert abs(a["yaw_deg"]) < 60 and abs(a["pitch_deg"]) < 45 and abs(a["roll_deg"]) < 45
        assert a["yaw"] == pytest.approx(a["yaw_deg"] / 90)
    # a mirror negates yaw and roll and keeps pitch, up to the detector's landmark noise (a few degrees)
    assert np.corrcoef(pairs[:, 0], pairs[:, 3])[0, 1] < -0.9
    assert np.abs(pairs[:, 0] + pairs[:, 3]).max() < 8 and np.abs(pairs[:, 2] + pairs[:, 5]).max() < 4
    assert np.abs(pairs[:, 1] - pairs[:, 4]).max() < 6 and np.corrcoef(pairs[:, 1], pairs[:, 4])[0, 1] > 0.9


def _hopenet_weights(folder):
    from facexlib.headpose.hopenet_arch import HopeNet
    torch.manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"params": HopeNet("resnet", [3, 4, 6, 3], 66).state_dict()}, folder / HOPENET_FILE)


def test_hopenet_loads_from_weights_folder_and_auto_prefers_it(tmp_path):
    assert isinstance(make_pose_estimator("auto", tmp_path), PnPPose)  # no file: PnP
    with pytest.raises(FileNotFoundError, match=HOPENET_FILE):
        make_pose_estimator("hopenet", tmp_path)
    _hopenet_weights(tmp_path)
    est = make_pose_estimator("auto", tmp_path)
    assert isinstance(est, HopeNetPose) and est.source == "hopenet"
    faces = np.random.default_rng(0).integers(0, 255, (3, 112, 112, 3), dtype=np.uint8)
    deg = est(faces)
    assert deg.shape == (3, 3) and np.all(np.abs(deg) <= 99)
    np.testing.assert_allclose(est(faces[:1]), deg[:1], atol=1e-4)  # per-image, not per-batch


def test_weights_file_with_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))
    torch.save({"params": Evil()}, tmp_path / HOPENET_FILE)
    with pytest.raises(Exception):
        make_pose_estimator("auto", tmp_path)


def test_age_is_absent_unless_plugged_in(lfw_files):
    assert make_age_estimator(None) is None
    with pytest.raises(ValueError, match="module:callable"):
        make_age_estimator("no_colon")
    mod = types.ModuleType("fake_age_plugin")
    mod.ages = lambda faces: np.full(len(faces), 33.0)  # a user's plug-in: any callable faces -> years
    sys.modules["fake_age_plugin"] = mod
    acc, _ = align_items(_faces(lfw_files, 2), make_detector("mtcnn"), P, age=make_age_estimator("fake_age_plugin:ages"))
    assert [a["age"] for a in acc] == [33.0] * len(acc)
