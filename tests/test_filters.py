"""The package filters' geometry: the identity-level threshold calibration, DCFace's r-ball, the
privacy audit's nearest real identity, and release version bumps."""
import numpy as np
import pytest

from flows.release import next_version
from tasks.filters import centre_threshold, r_ball
from tasks.quality import nearest_real


def clusters(k, per, dim, spread, seed=0):
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((k, dim)); c /= np.linalg.norm(c, axis=1, keepdims=True)
    x = np.repeat(c, per, 0) + spread * rng.standard_normal((k * per, dim))
    return x / np.linalg.norm(x, axis=1, keepdims=True), np.repeat(np.arange(k), per), c


def test_centre_threshold_separates_same_from_other_identities():
    emb, lab, _ = clusters(40, 6, 64, 0.06)
    thr = centre_threshold(emb, lab)
    halves = [(emb[lab == i][0::2].mean(0), emb[lab == i][1::2].mean(0)) for i in range(40)]
    same = [a @ b / np.linalg.norm(a) / np.linalg.norm(b) for a, b in halves]
    other = [halves[i][0] @ halves[(i + 1) % 40][1] / np.linalg.norm(halves[i][0]) / np.linalg.norm(halves[(i + 1) % 40][1])
             for i in range(40)]
    assert max(other) < thr < min(same)
    with pytest.raises(ValueError, match="real identities with 2"):
        centre_threshold(emb[:5], lab[:5])


def test_r_ball_keeps_first_and_maps_duplicates_to_it():
    c = np.array([[1, 0, 0], [0.99, 0.141, 0], [0, 1, 0], [0, 0, 1], [0.1, 0.995, 0]], dtype=float)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    assert r_ball(c, 0.9).tolist() == [0, 0, 2, 3, 2]
    assert r_ball(c, 1.01).tolist() == [0, 1, 2, 3, 4]  # nothing is within a radius above 1


def test_nearest_real_is_the_argmax_blockwise():
    rng = np.random.default_rng(1)
    s, r = rng.standard_normal((7, 16)), rng.standard_normal((2500, 16))  # > one 2048-row block of real centres
    s /= np.linalg.norm(s, axis=1, keepdims=True); r /= np.linalg.norm(r, axis=1, keepdims=True)
    best, arg = nearest_real(s, r)
    assert np.allclose(best, (s @ r.T).max(1)) and (arg == (s @ r.T).argmax(1)).all()


def test_release_versions_bump_from_the_newest_tag():
    assert next_version([], "patch") == "0.1.0"
    tags = ["v0.1.0", "v0.10.2", "v0.9.9", "v1.0.0-rc1", "notes"]
    assert next_version(tags, "patch") == "0.10.3"
    assert next_version(tags, "minor") == "0.11.0"
    assert next_version(tags, "major") == "1.0.0"


def test_filters_in_order_and_a_kept_representative_keeps_its_duplicates():
    from tasks.filters import apply_filters
    # 5 identities x 3 images; 0 and 1 share a direction (duplicates), 2 is private, 3 has two bad images
    d = np.eye(4)
    centre = {0: d[0], 1: d[0] * 0.99 + d[1] * 0.14, 2: d[2], 3: d[3], 4: -d[0]}
    ident = np.repeat(np.arange(5), 3)
    emb = np.stack([centre[i] for i in ident]); emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    cons = np.ones(15); cons[[9, 10]] = 0.1                              # identity 3: 2 of 3 images inconsistent
    face = np.ones(15, bool); face[12] = False                           # identity 4: one image without a face
    ids = np.arange(5)
    priv_enc, priv_judge = np.zeros(5, bool), np.array([False, False, True, False, False])
    p = {"min_consistency": 0.5, "face_filter": True, "min_images_per_identity": 2, "uniqueness": "drop"}
    reason, owner, rep = apply_filters(ident, emb, cons, face, ids, priv_enc, priv_judge, p, 0.9)
    assert reason.tolist() == ["", "", "", "not_unique", "not_unique", "not_unique", "privacy_judge", "privacy_judge",
                               "privacy_judge", "low_consistency", "low_consistency", "too_few_images", "no_face", "", ""]
    # identity 0 drops below min_images (its images fail consistency): its duplicate 1 is then kept, not lost
    cons2 = np.ones(15); cons2[[0, 1]] = 0.1
    reason, owner, rep = apply_filters(ident, emb, cons2, face, ids, priv_enc, priv_judge, p, 0.9)
    assert reason[:6].tolist() == ["low_consistency", "low_consistency", "too_few_images", "", "", ""]
    reason, owner, rep = apply_filters(ident, emb, cons, face, ids, priv_enc, priv_judge, {**p, "uniqueness": "merge"}, 0.9)
    assert reason[3:6].tolist() == ["", "", ""] and owner[3:6].tolist() == [0, 0, 0] and rep[3:6].tolist() == [0, 0, 0]
