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
