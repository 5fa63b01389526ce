"""The verification protocol against an independent brute-force implementation."""

import numpy as np

from tasks.verification import verify


def brute_force(dist, same, folds):
    n = len(same)
    bounds = [(k * n // folds, (k + 1) * n // folds) for k in range(folds)]
    accs = []
    for lo, hi in bounds:
        tr = [i for i in range(n) if not lo <= i < hi]
        best_t, best_a = None, -1
        for t in [i / 100 for i in range(400)]:
            a = sum((dist[i] < t) == same[i] for i in tr) / len(tr)
            if a > best_a:
                best_t, best_a = t, a
        accs.append(sum((dist[i] < best_t) == same[i] for i in range(lo, hi)) / (hi - lo))
    return float(np.mean(accs)), float(np.std(accs))


def test_matches_brute_force():
    rng = np.random.default_rng(0)
    n, d = 60, 8
    a = rng.standard_normal((n, d)); a /= np.linalg.norm(a, axis=1, keepdims=True)
    same = np.array([i % 2 == 0 for i in range(n)])
    noise = rng.standard_normal((n, d)) * np.where(same, 0.5, 3.0)[:, None]
    b = a + noise; b /= np.linalg.norm(b, axis=1, keepdims=True)
    res = verify(a, b, same, folds=10)
    acc, std = brute_force(((a - b) ** 2).sum(1), same, 10)
    assert abs(res["accuracy"] - acc) < 1e-12 and abs(res["accuracy_std"] - std) < 1e-12
    assert 0.5 < res["accuracy"] <= 1.0


def test_perfect_and_chance():
    e = np.eye(4)[[0, 1, 2, 3] * 5]
    same = np.array([True, False] * 10)
    b = np.where(same[:, None], e, np.roll(e, 1, axis=1))
    res = verify(e, b, same, folds=10)
    assert res["accuracy"] == 1.0 and res["tar_at_far_0.001"] == 1.0
    res = verify(e, e, same, folds=10)  # every distance 0: nothing separates the classes
    assert res["accuracy"] == 0.5


def test_far_resolution_flag():
    rng = np.random.default_rng(1)
    n = 2400  # 1200 impostor pairs, 1080 in each 9-fold training split: resolves 1e-3, not 1e-4
    a = rng.standard_normal((n, 4)); a /= np.linalg.norm(a, axis=1, keepdims=True)
    same = np.arange(n) % 2 == 0
    b = np.where(same[:, None], a, rng.standard_normal((n, 4)))
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    res = verify(a, b, same, folds=10, fars=(1e-3, 1e-4))
    assert res["tar_at_far_0.001_resolved"] and not res["tar_at_far_0.0001_resolved"]
    assert abs(res["far_resolution"] - 1 / 1080) < 1e-12


def insightface_val(dist, same, far_target, folds=10):
    """insightface's calculate_val (arcface_torch/eval/verification.py) written out independently: sklearn's
    unshuffled KFold, FAR on arange(0, 4, 0.001), and interp1d(far, thresholds, kind="slinear") as scipy <= 1.8
    built it (a degree-1 BSpline with knots [x0, x, xn] and the thresholds as coefficients)."""
    from scipy.interpolate import BSpline
    thresholds = np.arange(0, 4, 0.001)
    n = len(same)
    sizes = [n // folds + (1 if k < n % folds else 0) for k in range(folds)]
    starts = np.cumsum([0] + sizes)
    val, far = np.zeros(folds), np.zeros(folds)

    def val_far(t, d, s):
        pred = d < t
        return (pred & s).sum() / s.sum(), (pred & ~s).sum() / (~s).sum()

    for k in range(folds):
        test = np.arange(starts[k], starts[k + 1])
        train = np.setdiff1d(np.arange(n), test)
        far_train = np.array([val_far(t, dist[train], same[train])[1] for t in thresholds])
        if far_train.max() >= far_target:
            order = np.argsort(far_train, kind="mergesort")
            x, y = far_train[order], thresholds[order]
            threshold = float(BSpline.construct_fast(np.r_[x[0], x, x[-1]], y, 1)(far_target))
        else:
            threshold = 0.0
        val[k], far[k] = val_far(threshold, dist[test], same[test])
    return val.mean(), val.std(), far.mean()


def test_tar_at_far_equals_insightface_on_identical_embeddings():
    rng = np.random.default_rng(3)
    for n, spread in ((1203, 0.8), (600, 1.2)):  # 1203: unequal folds, as KFold splits them
        a = rng.standard_normal((n, 16)); a /= np.linalg.norm(a, axis=1, keepdims=True)
        same = rng.random(n) < 0.5
        b = a + rng.standard_normal((n, 16)) * np.where(same, spread * 0.3, 3.0)[:, None]
        b /= np.linalg.norm(b, axis=1, keepdims=True)
        # 0.1 lands exactly on FARs the training folds hold (the plateau rule); 1e-3 between 0 and the first
        fars = (1e-3, 1e-2, 0.1)
        res = verify(a, b, same, folds=10, fars=fars)
        dist = ((a - b) ** 2).sum(1)
        for f in fars:
            tar, tar_std, far = insightface_val(dist, same, f)
            assert abs(res[f"tar_at_far_{f:g}"] - tar) < 1e-12, (n, f)
            assert abs(res[f"tar_at_far_{f:g}_std"] - tar_std) < 1e-12
            assert abs(res[f"tar_at_far_{f:g}_far"] - far) < 1e-12
        assert 0 < res["tar_at_far_0.001"] < res["tar_at_far_0.1"] < 1


def test_threshold_at_far_reads_the_curve_like_insightface():
    from scipy.interpolate import BSpline

    from tasks.verification import threshold_at_far
    far = np.array([0, 0, 0.001, 0.001, 0.002, 0.004, 0.004, 0.01])
    thr = np.arange(len(far)) * 0.1
    spline = BSpline.construct_fast(np.r_[far[0], far, far[-1]], thr, 1)
    for target in (0.0, 0.0005, 0.001, 0.0015, 0.003, 0.004, 0.007):
        assert abs(threshold_at_far(far, thr, target) - float(spline(target))) < 1e-12, target
    assert threshold_at_far(far, thr, 0.02) == 0.0  # never reached: insightface's 0
