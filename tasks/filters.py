"""The package stage's filters and privacy audit, on unit embeddings (encoder or centred dlib judge).

    thr = centre_threshold(real_emb, real_labels)          # identity-level same-person cosine, calibrated
    keep_img = consistency >= min_cos                        # per image: cosine to its identity centre
    rep = r_ball(centres, radius)                            # per identity: the kept identity it falls within
    best, nearest = nearest_real(synth_centres, real_centres)  # per synthetic identity: privacy audit

Identity-level decisions compare identity centres, which are tighter than single images: a threshold
calibrated on image pairs would call distinct people the same. `centre_threshold` calibrates on centres
instead: each real identity's images are split in two halves, the two half-centres are a matched pair,
half-centres of different identities are impostor pairs, and the threshold is the middle of the
range of best accuracy on them.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .identity import centres
from .quality import _groups

REASONS = ("privacy_encoder", "privacy_judge", "low_consistency", "no_face", "too_few_images", "not_unique")


def centre_threshold(emb: np.ndarray, identity: np.ndarray, min_identities: int = 10, seed: int = 0) -> float:
    """Cosine above which two identity centres belong to the same real person (see module doc): the
    middle of the range of thresholds with the best accuracy, not its lenient edge."""
    halves_a, halves_b = [], []
    for ix in _groups(np.asarray(identity)):
        if len(ix) >= 2:
            halves_a.append(emb[ix[0::2]].mean(0)); halves_b.append(emb[ix[1::2]].mean(0))
    if len(halves_a) < min_identities:
        raise ValueError(f"centre_threshold: {len(halves_a)} real identities with 2+ images; need at least {min_identities}")
    a, b = (np.stack(h) for h in (halves_a, halves_b))
    a, b = (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12) for x in (a, b))
    n = len(a)
    other = (np.arange(n) + np.random.default_rng(seed).integers(1, n, n)) % n  # another identity's half-centre
    cos = np.r_[(a * b).sum(1), (a * b[other]).sum(1)]
    same = np.r_[np.ones(n, bool), np.zeros(n, bool)]
    grid = np.arange(-1.0, 1.0 + 1e-9, 0.005)
    acc = np.array([((cos >= t) == same).mean() for t in grid])
    best = grid[acc >= acc.max() - 1e-12]
    return float((best.min() + best.max()) / 2)


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


def apply_filters(ident: np.ndarray, emb: np.ndarray, cons: np.ndarray, face_found: np.ndarray, ids: np.ndarray,
                  private_encoder: np.ndarray, private_judge: np.ndarray, p: dict,
                  radius: float | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The package filters in their order (REASONS; flows/package.py docstring). Per image: the first
    reason it fails ('' = kept), the identity that owns it (its own, or its representative when merged)
    and the r-ball representative (-1 when it did not reach the r-ball)."""
    pos = np.searchsorted(ids, ident)
    reason = np.full(len(ident), "", dtype=object)
    reason[private_encoder[pos]] = "privacy_encoder"
    reason[(reason == "") & private_judge[pos]] = "privacy_judge"
    reason[(reason == "") & (cons < p["min_consistency"])] = "low_consistency"
    if p["face_filter"]:
        reason[(reason == "") & ~face_found] = "no_face"
    # before the r-ball, so an identity the r-ball keeps never loses its images (and its duplicates) afterwards
    left = pd.Series(ident[reason == ""]).value_counts()
    reason[(reason == "") & np.isin(ident, left[left < p["min_images_per_identity"]].index.to_numpy())] = "too_few_images"
    alive = reason == ""
    rep_of: dict[int, int] = {}
    if p["uniqueness"] != "keep" and alive.any():
        sid, sc = centres(emb[alive], ident[alive])  # centres of the surviving images
        rep_of = {int(i): int(sid[j]) for i, j in zip(sid, r_ball(sc, radius))}
    merged_into = np.array([rep_of.get(int(i), -1) for i in ident], dtype=int)
    duplicate = (merged_into >= 0) & (merged_into != ident)
    if p["uniqueness"] == "drop":
        reason[duplicate] = "not_unique"
    owner = np.where(duplicate & (p["uniqueness"] == "merge"), merged_into, ident)
    return reason, owner, merged_into
