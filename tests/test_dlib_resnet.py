"""models/dlib_resnet.py against dlib itself: the torch port's descriptors match compute_face_descriptor on real LFW
faces and on synthetic chips, and a damaged .dat file is refused with a ValueError naming it."""
import io
import re
import zipfile

import numpy as np
import pytest
from PIL import Image

from models.dlib_resnet import describe, load_dlib_resnet
from tasks.judge import _models_dir

DAT = _models_dir() / "dlib_face_recognition_resnet_model_v1.dat"


@pytest.fixture(scope="module")
def net():
    return load_dlib_resnet(DAT)


@pytest.fixture(scope="module")
def rec():
    import dlib
    return dlib.face_recognition_model_v1(str(DAT))


def _check(net, rec, chips):
    ours = describe(net, chips, batch_size=2)  # several batches, one short
    ref = np.stack([np.asarray(rec.compute_face_descriptor(c)) for c in chips])
    assert ours.shape == (len(chips), 128) and ours.dtype == np.float64
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-4)


def test_matches_dlib_on_real_faces(net, rec, lfw_files):
    zf = zipfile.ZipFile(lfw_files / "lfw-deepfunneled.zip")
    members = [m for m in zf.namelist() if m.endswith(".jpg")][:3]
    # deep-funneled LFW is 250x250 with the face centred: its middle, resized as DlibJudge.describe resizes
    chips = [np.asarray(Image.open(io.BytesIO(zf.read(m))).convert("RGB").crop((55, 55, 195, 195))
                        .resize((150, 150), Image.BICUBIC)) for m in members]
    _check(net, rec, np.stack(chips))


def test_matches_dlib_on_synthetic_chips(net, rec):
    y, x = np.mgrid[0:150, 0:150].astype(np.float64)
    gradient = np.stack([x * 255 / 149, y * 255 / 149, (x + y) * 255 / 298], -1)
    rings = 127.5 + 127.5 * np.cos(np.hypot(x - 75, y - 60)[..., None] / 6 + np.array([0, 2, 4]))
    noise = np.random.default_rng(0).integers(0, 256, (150, 150, 3))  # exercises every channel of every layer
    _check(net, rec, np.stack([gradient, rings, noise]).round().astype(np.uint8))


@pytest.mark.parametrize("damage", ["truncated", "flipped"])
def test_damaged_file_raises_value_error_naming_it(tmp_path, damage):
    data = bytearray(DAT.read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
    else:
        data[0] = 0x7F  # the first integer's control byte, with dlib's reserved bits set
    bad = tmp_path / f"{damage}.dat"
    bad.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=re.escape(str(bad))) as e:
        load_dlib_resnet(bad)
    assert "\n" not in str(e.value)


def test_the_judge_describes_aligned_crops_as_dlib_does(rec, lfw_files):
    """tasks.judge.DlibJudge (the port, batched) on 112 px crops: dlib's descriptors of the same 150 px chips."""
    from tasks.judge import DlibJudge
    zf = zipfile.ZipFile(lfw_files / "lfw-deepfunneled.zip")
    members = [m for m in zf.namelist() if m.endswith(".jpg")][3:6]
    crops = [np.asarray(Image.open(io.BytesIO(zf.read(m))).convert("RGB").crop((69, 69, 181, 181))) for m in members]
    judge = DlibJudge(batch_size=2)
    ref = np.stack([np.asarray(rec.compute_face_descriptor(judge.chip(c))) for c in crops])
    np.testing.assert_allclose(judge.describe_all(crops), ref, rtol=0, atol=1e-4)
    assert judge.describe_all([]).shape == (0, 128)
