"""The package stage's filters and privacy audit, on unit embeddings (encoder or centred dlib judge).

    thr, radius, cal = privacy_thresholds(p, real_centres)    # params' thresholds; unset ones at privacy_fmr
    cal = fmr_threshold(real_centres, fmr, "encoder")         # the cosine real impostor identity pairs reach at fmr
    keep_img = consistency >= min_cos                          # per image: cosine to its identity centre
    rep = r_ball(centres, radius)                              # per identity: the kept identity it falls within
    best, nearest = nearest_real(synth_centres, real_centres)  # per synthetic identity: privacy audit

Identity-level decisions compare identity centres, which are tighter than single images: a threshold
calibrated on image pairs would call distinct people the same. An unset threshold is set on the centres
the privacy audit compares against - the real training identities' - at a stated false-match rate
(`package.privacy_fmr`): over all n(n-1)/2 pairs of distinct real identities (impostor pairs), it is the
smallest cosine t with at most a fraction fmr of those pairs at or above t. A synthetic identity at or
above t to a real one is as close to that person as only that fraction of pairs of different real people
are. The rate is resolved only from at least MIN_TAIL / fmr pairs (so MIN_TAIL of them lie beyond t);
fewer are refused. The uniqueness r-ball's radius defaults to the encoder's threshold at the same rate:
two synthetic identities closer than real impostors at that rate are duplicates.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .identity import centres

REASONS = ("privacy_encoder", "privacy_judge", "low_consistency", "no_face", "too_few_images", "not_unique")
MIN_TAIL = 10  # impostor pairs a stated false-match rate must leave at or above its threshold (module doc)


def fmr_threshold(real_centres: np.ndarray, fmr: float, model: str = "encoder", max_block: int = 4_000_000) -> dict:
    """The cosine distinct real identities' unit centres reach at false-match rate `fmr` (module doc), over
    all impostor pairs blockwise, keeping only the top of their distribution. Returns {fmr, threshold,
    impostor_pairs, impostor_pairs_at_or_above (<= fmr x impostor_pairs), real_identities}; a one-line
    ValueError for non-finite centres or too few pairs to resolve fmr."""
    c = np.asarray(real_centres, dtype=np.float64)
    n = len(c)
    bad = int((~np.isfinite(c).all(1)).sum()) if n else 0
    if bad:
        raise ValueError(f"package: the {model}'s privacy threshold is not finite: {bad} of {n} real identity centres "
                         "hold NaN/inf (check its real training embeddings)")
    pairs, need = n * (n - 1) // 2, int(np.ceil(MIN_TAIL / fmr - 1e-9))
    if pairs < need:
        raise ValueError(f"package.privacy_fmr: {fmr:g} is not resolved by {pairs} real impostor identity pairs of the "
                         f"{model} ({n} real identities); it needs at least {need} ({MIN_TAIL} / fmr) - use a larger "
                         f"privacy_fmr, or set package.privacy_threshold.{model}")
    k = int(np.floor(fmr * pairs * (1 + 1e-12)))  # impostor pairs allowed at or above the threshold
    top = np.zeros(0)  # the k + 1 highest impostor cosines so far
    step = max(1, max_block // max(n, 1))
    for i in range(0, n, step):
        s = c[i:i + step] @ c.T
        vals = s[np.arange(n)[None, :] > np.arange(i, i + len(s))[:, None]]  # each pair once: j > i
        top = np.concatenate([top, vals])
        if len(top) > k + 1:
            top = np.partition(top, len(top) - k - 1)[-(k + 1):]
    t = float(np.nextafter(top.min(), np.inf))  # just above the (k+1)-th highest: at most k pairs reach it
    return {"fmr": float(fmr), "threshold": t, "impostor_pairs": int(pairs),
            "impostor_pairs_at_or_above": int((top >= t).sum()), "real_identities": int(n)}


def privacy_thresholds(p: dict, real_centres: dict) -> tuple[dict, float | None, dict]:
    """The package params' identity-level thresholds: privacy_threshold.{encoder,judge} and unique_radius as
    given, each unset one at privacy_fmr on the real identity centres (model -> unit centres; the radius
    takes the encoder's). Returns (model -> threshold, the r-ball radius or None when uniqueness is keep,
    model -> fmr_threshold record for each model calibrated)."""
    unset = {m for m in ("encoder", "judge") if p["privacy_threshold"][m] is None}
    if p["uniqueness"] != "keep" and p["unique_radius"] is None:
        unset.add("encoder")
    cal = {m: fmr_threshold(real_centres[m], p["privacy_fmr"], m) for m in sorted(unset)}
    thr = {m: cal[m]["threshold"] if p["privacy_threshold"][m] is None else p["privacy_threshold"][m] for m in ("encoder", "judge")}
    radius = None if p["uniqueness"] == "keep" else cal["encoder"]["threshold"] if p["unique_radius"] is None else p["unique_radius"]
    return thr, radius, cal


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
