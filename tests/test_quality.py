"""Dataset-quality metrics on constructed embeddings with known answers, and head pose on real LFW faces."""
import io

import numpy as np
from PIL import Image

from tasks.align import make_detector
from tasks.archives import ArchiveImages
import tasks.quality as tq
from tasks.quality import (face_poses, loo_cos_to_centre, pair_cosines, pose_spread, privacy_leakage, quality,
                           real_nearest_other, unique_identities)


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_unique_identities_r_ball():
    c = np.eye(4)[[0, 1, 2, 3]]
    near = unit(c[0] + 0.3 * c[1])  # cosine 0.958 to identity 0
    assert unique_identities(np.vstack([c, near]), 0.3) == 4
    assert unique_identities(np.vstack([c, near]), 0.99) == 5
    assert unique_identities(c, -1.0) == 1


def test_quality_on_clusters_with_known_geometry():
    rng = np.random.default_rng(0)
    centres = np.eye(16)[:5]
    ident = np.repeat(np.arange(5), 8)
    emb = unit(centres[ident] + 0.05 * rng.standard_normal((40, 16)))
    e = np.eye(16)
    real = np.stack([e[0], e[10], unit(e[10] + e[11])])  # identity 0 sits on a real identity: a leak
    q = quality(emb, ident, threshold=0.5, radius=0.3, real_centres=real)
    assert q["identities"] == 5 and q["images"] == 40
    assert q["consistency_mean_cos_to_centre"] > 0.98 and q["consistency_frac_above_threshold"] == 1.0
    assert abs(q["centre_cos_mean"]) < 0.05 and q["unique_identities_r0.3"] == 5
    assert q["privacy_identities_above_threshold"] == 1 and q["privacy_max_cos_to_real_max"] > 0.98
    assert abs(q["real_nearest_other_real_p95"] - 0.7071068) < 1e-6 and q["privacy_identities_above_real_p95"] == 1
    intra, inter = pair_cosines(emb, ident, 1000)
    assert len(intra) == 5 * 28 and intra.min() > 0.9 and abs(inter).max() < 0.3
    leak = privacy_leakage(np.eye(3), unit(np.array([[1.0, 1.0, 0.0]])))
    np.testing.assert_allclose(leak, [0.7071068, 0.7071068, 0.0], atol=1e-6)


def test_pose_spread_and_real_face_poses(lfw_files):
    poses = np.array([[0.1, 0, 0], [0.3, 0, 0], [np.nan] * 3, [0.0, 0.2, 0.0], [0.0, 0.4, 0.0]])
    s = pose_spread(poses, np.array([0, 0, 0, 1, 1]))
    assert s["faces_found"] == 0.8 and s["identities_with_2_faces"] == 2
    assert abs(s["yaw_std_within_identity"] - 0.05) < 1e-9 and abs(s["pitch_std_within_identity"] - 0.05) < 1e-9
    zf = ArchiveImages(lfw_files / "lfw-deepfunneled.zip")
    img = np.asarray(Image.open(io.BytesIO(zf.read("lfw-deepfunneled/Aaron_Peirsol/Aaron_Peirsol_0001.jpg"))).convert("RGB"))
    noise = np.random.default_rng(0).integers(0, 256, img.shape, dtype=np.uint8)
    face = np.asarray(Image.fromarray(img[40:210, 40:210]).resize((112, 112), Image.BICUBIC))
    p = face_poses(np.stack([face, noise[:112, :112]]), make_detector("mtcnn"))
    assert not np.isnan(p[0]).any() and np.all(np.abs(p[0]) <= 1) and np.isnan(p[1]).all()


def test_blockwise_maxima_match_dense(monkeypatch):
    rng = np.random.default_rng(2)
    a, b = unit(rng.standard_normal((7, 5))), unit(rng.standard_normal((9, 5)))
    dense_self = a @ a.T
    np.fill_diagonal(dense_self, -np.inf)
    off = (a @ a.T)[~np.eye(7, dtype=bool)]
    for block in (2, 3, 2048):  # blocks that split the rows unevenly, and one block
        monkeypatch.setattr(tq, "BLOCK", block)
        np.testing.assert_allclose(privacy_leakage(a, b), (a @ b.T).max(1))
        np.testing.assert_allclose(real_nearest_other(a), dense_self.max(1))
        q = quality(a, np.arange(7), 0.3, 0.3)
        assert abs(q["centre_cos_mean"] - off.mean()) < 1e-12 and abs(q["centre_cos_max"] - off.max()) < 1e-12


def test_leave_one_out_consistency_and_empty_set():
    e = unit(np.array([[1.0, 0], [1, 0.2], [0, 1], [0.3, 1], [1, 1]]))
    loo = loo_cos_to_centre(e, np.array([0, 0, 1, 1, 2]))
    np.testing.assert_allclose(loo[:4], [e[0] @ e[1], e[0] @ e[1], e[2] @ e[3], e[2] @ e[3]])
    assert np.isnan(loo[4])  # a singleton has no other images
    assert quality(np.zeros((0, 4)), np.zeros(0, int), 0.3, 0.3, real_centres=np.eye(4))["images"] == 0
