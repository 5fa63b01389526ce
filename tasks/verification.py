"""Face verification protocol of insightface (METHODS.md section 5).

Squared L2 distance between L2-normalised (flip-fused) embeddings; the pairs are split into `folds`
contiguous folds; for each fold the threshold from arange(0, 4, 0.01) that maximises accuracy on the
other folds is applied to it. TAR@FAR (insightface's "val"): per fold, the FAR of the other folds is
computed on the finer grid arange(0, 4, 0.001), the threshold at the target FAR is read off that curve by
linear interpolation (`threshold_at_far`), and the fold's TAR and FAR at it are averaged over the folds.
On identical embeddings the figures equal insightface's `calculate_val` (tests/test_verification.py).

    res = verify(emb_a, emb_b, issame, folds=10, fars=[1e-3])   # {"accuracy": .., "accuracy_std": .., ...}
"""
from __future__ import annotations

import numpy as np

THRESHOLDS = np.arange(0, 4, 0.01)       # accuracy's grid
FAR_THRESHOLDS = np.arange(0, 4, 0.001)  # TAR@FAR's grid


def _acc(thr: float, dist: np.ndarray, same: np.ndarray) -> float:
    return float(((dist < thr) == same).mean())


def _tar_far(thr: float, dist: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    pred = dist < thr
    tar = (pred & same).sum() / max(same.sum(), 1)
    far = (pred & ~same).sum() / max((~same).sum(), 1)
    return float(tar), float(far)


def far_curve(thresholds: np.ndarray, dist: np.ndarray, same: np.ndarray) -> np.ndarray:
    """The FAR (share of impostor pairs with dist < t) at each threshold t: nondecreasing in t."""
    impostors = np.sort(dist[~same])
    return np.searchsorted(impostors, thresholds, side="left") / max(len(impostors), 1)


def threshold_at_far(far: np.ndarray, thresholds: np.ndarray, target: float) -> float:
    """The threshold at FAR `target` on a nondecreasing FAR curve: insightface reads it with
    scipy's interp1d(far, thresholds, kind="slinear")(target), which (scipy <= 1.8; later versions refuse
    the curve's repeated FARs) is the piecewise-linear B-spline through the points in threshold order.
    Between two FARs it interpolates from the last threshold of the lower FAR to the first of the higher;
    on a FAR the curve holds, it takes the largest threshold that holds it. Never reaching the target: 0."""
    if far.max() < target:
        return 0.0
    j = int(np.searchsorted(far, target, side="right")) - 1  # the last point at or below the target
    if far[j] == target or j == len(far) - 1:
        return float(thresholds[j])
    w = (target - far[j]) / (far[j + 1] - far[j])
    return float(thresholds[j] + w * (thresholds[j + 1] - thresholds[j]))


def verify(emb_a: np.ndarray, emb_b: np.ndarray, issame, folds: int = 10, fars=(1e-3,)) -> dict:
    same = np.asarray(issame, dtype=bool)
    dist = ((emb_a - emb_b) ** 2).sum(1)
    if len(same) < folds:
        raise ValueError(f"{len(same)} pairs cannot be split into {folds} folds")
    parts = np.array_split(np.arange(len(same)), folds)
    accs, thrs, tars, achieved = [], [], {f: [] for f in fars}, {f: [] for f in fars}
    for k in range(folds):
        test = parts[k]
        train = np.concatenate([parts[j] for j in range(folds) if j != k])
        train_acc = np.array([_acc(t, dist[train], same[train]) for t in THRESHOLDS])
        best = THRESHOLDS[int(train_acc.argmax())]
        accs.append(_acc(best, dist[test], same[test]))
        thrs.append(best)
        far_train = far_curve(FAR_THRESHOLDS, dist[train], same[train])
        for f in fars:
            tar, far = _tar_far(threshold_at_far(far_train, FAR_THRESHOLDS, f), dist[test], same[test])
            tars[f].append(tar)
            achieved[f].append(far)
    res = {"accuracy": float(np.mean(accs)), "accuracy_std": float(np.std(accs)), "threshold": float(np.mean(thrs)),
           "pairs": int(len(same)), "folds": folds,
           # the smallest FAR the training folds can resolve: a TAR@FAR below it is not meaningful
           "far_resolution": 1.0 / max(int((~same).sum() * (folds - 1) / folds), 1)}
    for f in fars:
        res[f"tar_at_far_{f:g}"] = float(np.mean(tars[f]))
        res[f"tar_at_far_{f:g}_std"] = float(np.std(tars[f]))
        res[f"tar_at_far_{f:g}_far"] = float(np.mean(achieved[f]))  # the held-out folds' mean FAR at those thresholds
        # False when the training folds hold too few impostor pairs to measure this FAR (threshold at FAR 0)
        res[f"tar_at_far_{f:g}_resolved"] = bool(f >= res["far_resolution"])
    return res


def roc(emb_a: np.ndarray, emb_b: np.ndarray, issame) -> list[dict]:
    same = np.asarray(issame, dtype=bool)
    dist = ((emb_a - emb_b) ** 2).sum(1)
    rows = []
    for t in THRESHOLDS:
        tar, far = _tar_far(t, dist, same)
        rows.append({"threshold": round(float(t), 2), "fpr": far, "tpr": tar})
    return rows
