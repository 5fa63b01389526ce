"""The package filters' geometry: the identity-level thresholds at a stated false-match rate, DCFace's
r-ball, the privacy audit's nearest real identity, the card's operating point, and release version bumps."""
import numpy as np
import pytest

from flows.release import next_version
from tasks.filters import fmr_threshold, privacy_thresholds, r_ball
from tasks.identity import centres
from tasks.quality import nearest_real, real_nearest_other


def clusters(k, per, dim, spread, seed=0):
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((k, dim)); c /= np.linalg.norm(c, axis=1, keepdims=True)
    x = np.repeat(c, per, 0) + spread * rng.standard_normal((k * per, dim))
    return x / np.linalg.norm(x, axis=1, keepdims=True), np.repeat(np.arange(k), per), c


PKG = {"privacy_threshold": {"encoder": None, "judge": None}, "privacy_fmr": 0.001, "uniqueness": "drop", "unique_radius": None}


def test_threshold_at_a_stated_false_match_rate_on_real_impostor_identity_pairs():
    # 200 real identities x 5 noisy images: 19,900 impostor pairs of their centres, enough for fmr 0.001 (10 / fmr)
    emb, lab, _ = clusters(200, 5, 256, 0.05)
    ids, rc = centres(emb, lab)
    thr, radius, cal = privacy_thresholds(PKG, {"encoder": rc, "judge": rc})
    t = thr["encoder"]
    s = (rc @ rc.T)[np.triu_indices(len(rc), 1)]
    assert cal["encoder"]["impostor_pairs"] == len(s) == 19900 and cal["encoder"]["fmr"] == 0.001
    assert (s >= t).sum() == cal["encoder"]["impostor_pairs_at_or_above"] <= 0.001 * len(s)  # the stated rate holds
    assert (s >= s[s < t].max()).sum() > 0.001 * len(s)       # and t is the smallest threshold that holds it
    assert radius == t == thr["judge"]                         # the r-ball radius: the encoder's, at the same rate
    assert fmr_threshold(rc, 0.001, max_block=3000)["threshold"] == t  # blockwise: ~15 rows a block, same answer
    # each flagged pair flags at most its two identities
    assert (real_nearest_other(rc) >= t).mean() <= 2 * cal["encoder"]["impostor_pairs_at_or_above"] / len(rc)
    # a synthetic identity just above t to a real one is flagged, just below is not: its off-real part is orthogonal
    # to every real centre (256 dims > 200 centres), so its cosine to any other real one is scaled down from r0's
    r0 = int(real_nearest_other(rc).argmin())
    u = np.linalg.qr(np.c_[rc.T, np.random.default_rng(1).standard_normal(256)])[0][:, -1]  # unit, orthogonal to rc
    syn = np.stack([a * rc[r0] + np.sqrt(1 - a * a) * u for a in (t + 0.01, t - 0.01)])
    best, arg = nearest_real(syn, rc)
    assert np.allclose(best, [t + 0.01, t - 0.01]) and arg[0] == r0
    assert (best >= thr["encoder"]).tolist() == [True, False]
    # given thresholds are used as they are; without an r-ball there is no radius
    thr, radius, cal = privacy_thresholds({**PKG, "privacy_threshold": {"encoder": 0.5, "judge": None}, "uniqueness": "keep"},
                                          {"encoder": rc, "judge": rc})
    assert thr["encoder"] == 0.5 and radius is None and set(cal) == {"judge"}


def test_too_few_impostor_pairs_or_non_finite_embeddings_are_one_line_errors():
    emb, lab, _ = clusters(200, 3, 64, 0.05)
    _, rc = centres(emb, lab)
    with pytest.raises(ValueError) as e:  # 1e-4 needs 100,000 pairs; 200 identities give 19,900
        privacy_thresholds({**PKG, "privacy_fmr": 1e-4}, {"encoder": rc, "judge": rc})
    assert "package.privacy_fmr" in str(e.value) and "19900" in str(e.value) and "\n" not in str(e.value)
    emb[4] = np.nan  # one image of identity 1
    _, bad = centres(emb, lab)
    with pytest.raises(ValueError, match="judge's privacy threshold is not finite") as e:
        privacy_thresholds(PKG, {"encoder": rc, "judge": bad})
    assert "\n" not in str(e.value)


def test_card_states_the_operating_point():
    from tasks.card import operating_point
    cal = {m: {"fmr": 0.001, "threshold": t, "impostor_pairs": 44850, "impostor_pairs_at_or_above": 44, "real_identities": 300}
           for m, t in (("encoder", 0.4123), ("judge", 0.3871))}
    priv = {"thresholds": {"encoder": 0.4123, "judge": 0.3871}, "calibration": cal,
            "encoder": {"real_identities_at_threshold_to_another_real": 0.12},
            "judge": {"real_identities_at_threshold_to_another_real": 0.15}}
    text = operating_point(priv, PKG)
    assert text.startswith("Privacy: a synthetic identity is dropped") and "false-match rate of 0.001" in text
    assert all(x in text for x in ("encoder cosine 0.412", "judge cosine 0.387", "44,850 pairs", "12% (encoder)", "15% (judge)"))
    given = operating_point(priv, {**PKG, "privacy_threshold": {"encoder": 0.4123, "judge": 0.3871}})
    assert "set in params" in given and "false-match" not in given


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
