"""The package stage's filters and privacy audit, on unit embeddings (encoder or centred dlib judge).

    thr = centre_threshold(real_emb, real_labels)          # identity-level same-person cosine, calibrated
    keep_img = consistency >= min_cos                        # per image: cosine to its identity centre
    rep = r_ball(centres, radius)                            # per identity: the kept identity it falls within
    best, nearest = nearest_real(synth_centres, real_centres)  # per synthetic identity: privacy audit

Identity-level decisions compare identity centres, which are tighter than single images: a threshold
calibrated on image pairs would call distinct people the same. `centre_threshold` calibrates on centres
instead: each real identity's images are split in two halves, the two half-centres are a matched pair,
half-centres of different identities are impostor pairs, and the insightface protocol picks the
threshold (tasks.verification).
"""
from __future__ import annotations

import numpy as np

from .quality import _groups
from .verification import verify


def centre_threshold(emb: np.ndarray, identity: np.ndarray, folds: int = 10, seed: int = 0) -> float:
    """Cosine above which two identity centres belong to the same real person (see module doc)."""
    halves_a, halves_b = [], []
    for ix in _groups(np.asarray(identity)):
        if len(ix) >= 2:
            halves_a.append(emb[ix[0::2]].mean(0)); halves_b.append(emb[ix[1::2]].mean(0))
    if len(halves_a) < max(folds, 2):
        raise ValueError(f"centre_threshold: {len(halves_a)} real identities with 2+ images; need at least {max(folds, 2)}")
    a, b = (np.stack(h) for h in (halves_a, halves_b))
    a, b = (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12) for x in (a, b))
    n = len(a)
    shift = np.random.default_rng(seed).integers(1, n, n)  # impostor: another identity's half-centre
    other = (np.arange(n) + shift) % n
    ea = np.concatenate([a, a]); eb = np.concatenate([b, b[other]])
    same = np.r_[np.ones(n, bool), np.zeros(n, bool)]
    order = np.random.default_rng(seed + 1).permutation(2 * n)  # folds mix both kinds
    res = verify(ea[order], eb[order], same[order], folds)
    return 1.0 - res["threshold"] / 2.0  # squared L2 on unit vectors -> cosine


def r_ball(c: np.ndarray, radius: float) -> np.ndarray:
    """DCFace's r-ball, greedy in identity order: rep[i] = i when identity i is kept (no kept centre within
    cosine radius), else the kept identity it falls within (to drop i, or merge it into rep[i])."""
    rep = np.arange(len(c))
    kept: list[int] = []
    for i, v in enumerate(c):
        if kept:
            s = c[kept] @ v
            j = int(s.argmax())
            if s[j] >= radius:
                rep[i] = kept[j]
                continue
        kept.append(i)
    return rep
