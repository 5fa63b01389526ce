"""Face verification protocol of insightface (METHODS.md section 5).

Squared L2 distance between L2-normalised (flip-fused) embeddings; the pairs are split into `folds`
contiguous folds; for each fold the threshold from arange(0, 4, 0.01) that maximises accuracy on the
other folds is applied to it. TAR@FAR: per fold, the largest threshold whose FAR on the other folds
stays at or below the target is applied to it.

    res = verify(emb_a, emb_b, issame, folds=10, fars=[1e-3])   # {"accuracy": .., "accuracy_std": .., ...}
"""
from __future__ import annotations

import numpy as np

THRESHOLDS = np.arange(0, 4, 0.01)


def _acc(thr: float, dist: np.ndarray, same: np.ndarray) -> float:
    return float(((dist < thr) == same).mean())


def _tar_far(thr: float, dist: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    pred = dist < thr
    tar = (pred & same).sum() / max(same.sum(), 1)
    far = (pred & ~same).sum() / max((~same).sum(), 1)
    return float(tar), float(far)


def verify(emb_a: np.ndarray, emb_b: np.ndarray, issame, folds: int = 10, fars=(1e-3,)) -> dict:
    same = np.asarray(issame, dtype=bool)
    dist = ((emb_a - emb_b) ** 2).sum(1)
    if len(same) < folds:
        raise ValueError(f"{len(same)} pairs cannot be split into {folds} folds")
    parts = np.array_split(np.arange(len(same)), folds)
    accs, thrs, tars = [], [], {f: [] for f in fars}
    for k in range(folds):
        test = parts[k]
        train = np.concatenate([parts[j] for j in range(folds) if j != k])
        train_acc = np.array([_acc(t, dist[train], same[train]) for t in THRESHOLDS])
        best = THRESHOLDS[int(train_acc.argmax())]
        accs.append(_acc(best, dist[test], same[test]))
        thrs.append(best)
        far_train = np.array([_tar_far(t, dist[train], same[train])[1] for t in THRESHOLDS])
        for f in fars:
            # the largest threshold whose training FAR stays at or below the target
            thr = float(THRESHOLDS[far_train <= f].max()) if (far_train <= f).any() else 0.0
            tars[f].append(_tar_far(thr, dist[test], same[test])[0])
    res = {"accuracy": float(np.mean(accs)), "accuracy_std": float(np.std(accs)), "threshold": float(np.mean(thrs)),
           "pairs": int(len(same)), "folds": folds,
           # the smallest FAR the training folds can resolve: a TAR@FAR below it is not meaningful
           "far_resolution": 1.0 / max(int((~same).sum() * (folds - 1) / folds), 1)}
    for f in fars:
        res[f"tar_at_far_{f:g}"] = float(np.mean(tars[f]))
        res[f"tar_at_far_{f:g}_std"] = float(np.std(tars[f]))
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
