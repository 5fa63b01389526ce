"""Dataset-quality metrics on constructed embeddings with known answers, and head pose on real LFW faces."""
import io

import numpy as np
from PIL import Image

from tasks.align import make_detector
from tasks.archives import ArchiveImages
import tasks.quality as tq
from tasks.quality import (at_resolution, face_poses, loo_cos_to_centre, pair_cosines, pose_spread, privacy_leakage, quality,
                           real_baseline, real_nearest_other, unique_identities)


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


def _lfw_crops(lfw_files, people=4, per=4):
    """per photos of the first `people` LFW people with that many: 112 px centre crops of the funneled images."""
    import zipfile
    zf = zipfile.ZipFile(lfw_files / "lfw-deepfunneled.zip")
    by: dict = {}
    for m in sorted(zf.namelist()):
        if m.endswith(".jpg"):
            by.setdefault(m.split("/")[1], []).append(m)
    names = [n for n, ms in sorted(by.items()) if len(ms) >= per][:people]
    faces = [np.asarray(Image.open(io.BytesIO(zf.read(m))).convert("RGB").crop((69, 69, 181, 181))) for n in names for m in by[n][:per]]
    return np.stack(faces), np.repeat(np.arange(people), per)


def _shard(folder, faces, labels, fmt):
    from tasks.shards import write_shards
    samples = []
    for i, (f, c) in enumerate(zip(faces, labels)):
        buf = io.BytesIO()
        Image.fromarray(f).save(buf, format="JPEG" if fmt == "jpg" else "PNG")
        samples.append({"__key__": f"k{i:03d}", fmt: buf.getvalue(), "cls": int(c)})
    folder.mkdir()
    return [folder / s["shard"] for s in write_shards(samples, folder, "faces", 100)]


def test_real_faces_at_the_synthetic_resolution_take_the_synthetic_path(tmp_path, lfw_files):
    """Real LFW faces (JPEG, 112 px, as align writes them) downsampled to 8 px by embed_set(resolution=8) are judged
    and re-detected exactly as the same faces stored as 8 px images (a synthetic set of that size) are; the baseline
    then holds the judge's pair acceptance and the detection rate at 8 and at 112 px, and the product's ratios."""
    from tasks.describe import embed_set, smallest_side
    from tasks.judge import DlibJudge, centred_unit
    faces, labels = _lfw_crops(lfw_files)
    real = _shard(tmp_path / "real", faces, labels, "jpg")
    decoded = embed_set(None, real, grid_ids=range(4))["grid"].astype(np.uint8)  # the JPEGs as they decode
    small = at_resolution(decoded, 8)
    assert small.shape == (16, 8, 8, 3) and at_resolution(decoded, 112) is decoded
    assert abs(float(small.mean()) - float(decoded.mean())) < 2.0  # antialiased: the mean colour stays
    synthetic = _shard(tmp_path / "synthetic", small, labels, "png")  # lossless: the same 8 px pixels
    assert smallest_side(real) == 112 and smallest_side(synthetic) == 8
    judge, det = DlibJudge(), make_detector("mtcnn")
    full = embed_set(judge.describe_all, real, detector=det)
    low = embed_set(judge.describe_all, real, detector=det, resolution=8)
    syn = embed_set(judge.describe_all, synthetic, detector=det)
    np.testing.assert_array_equal(low["emb"], syn["emb"])
    np.testing.assert_array_equal(low["poses"], syn["poses"])
    np.testing.assert_array_equal(low["poses"], face_poses(small, det))
    assert (low["labels"] == full["labels"]).all() and list(low["keys"]) == list(full["keys"])
    found = {k: pose_spread(e["poses"], e["labels"])["faces_found"] for k, e in (("full", full), ("low", low))}
    assert found["full"] == 1.0 and found["low"] < 1.0  # 8 px is too small for MTCNN on some of these faces
    mean = full["emb"].mean(0)  # the judge's cosines: centred on the real faces' mean (tasks/judge.py)
    q = {k: quality(centred_unit(e["emb"], mean), e["labels"], 0.235, 0.3) for k, e in (("full", full), ("low", low), ("syn", syn))}
    base = real_baseline({"quality": q["syn"], "resolution": 8, "faces_found": found["low"]},
                         {"quality": q["low"], "resolution": 8, "faces_found": found["low"]},
                         {"quality": q["full"], "resolution": 112, "faces_found": found["full"]})
    assert base["judge_same_person_cos_threshold"] == 0.235
    lo, hi = base["real_at_synthetic_resolution"], base["real_at_full_resolution"]
    assert (lo["resolution"], hi["resolution"], lo["faces_found"], hi["faces_found"]) == (8, 112, found["low"], 1.0)
    assert hi["same_identity_pairs_accepted"] == q["full"]["intra_pairs_same_person"] and hi["identities"] == 4
    assert hi["different_identity_pairs_accepted"] == q["full"]["inter_pairs_same_person"]
    r = base["ratios"]  # the same pixels: the like-for-like ratios are exactly 1 and meet both targets
    assert r["baseline"] == "real_at_synthetic_resolution" and r["real_resolution"] == 8
    assert r["same_identity_synthetic_over_real"] == 1.0 and r["same_identity_meets_target"] and r["same_identity_target_min"] == 0.8
    if lo["different_identity_pairs_accepted"]:
        assert r["different_identity_synthetic_over_real"] == 1.0 and r["different_identity_meets_target"]
    assert r["different_identity_target_max"] == 2.0
    v = base["ratios_vs_full_resolution"]
    assert v["baseline"] == "real_at_full_resolution" and v["real_resolution"] == 112
    assert abs(v["same_identity_synthetic_over_real"] - lo["same_identity_pairs_accepted"] / hi["same_identity_pairs_accepted"]) < 1e-12
    # 8 px faces hardly tell people apart: against 112 px faces the different-identity ratio misses its target
    assert lo["different_identity_pairs_accepted"] > 10 * hi["different_identity_pairs_accepted"]
    assert v["different_identity_synthetic_over_real"] > 2.0 and v["different_identity_meets_target"] is False


def test_acceptance_ratios_undefined_without_a_real_figure():
    syn = {"same_identity_pairs_accepted": 0.9, "different_identity_pairs_accepted": 0.3}
    real = {"resolution": 32, "same_identity_pairs_accepted": 0.9, "different_identity_pairs_accepted": 0.0}
    r = tq.acceptance_ratios(syn, real)
    assert r["different_identity_synthetic_over_real"] is None and r["different_identity_meets_target"] is None
    assert r["same_identity_synthetic_over_real"] == 1.0 and r["same_identity_meets_target"] is True
    r = tq.acceptance_ratios({**syn, "different_identity_pairs_accepted": 0.25}, {**real, "different_identity_pairs_accepted": 0.1})
    assert abs(r["different_identity_synthetic_over_real"] - 2.5) < 1e-12 and r["different_identity_meets_target"] is False
