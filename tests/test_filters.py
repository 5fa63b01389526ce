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
