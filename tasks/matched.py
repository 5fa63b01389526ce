"""A real training subset the size of the synthetic set, for the like-for-like FR comparison (train_fr_matched).

    subset, record = size_matched_subset(real_manifest, synthetic_manifest.groupby("label").size(), seed)
    # subset: the chosen rows of real_manifest (key, label, ...); record: target, selected, shortfall

Each of the synthetic set's identities gets a real counterpart with the same number of images: the largest
counts first, each from a seeded draw among the unused real identities that have at least that many images;
the images within a real identity are a seeded draw too. So the subset has the synthetic set's identity count,
image count and per-identity distribution. Where the real data cannot match (fewer real identities, or no
real identity with that many images), it takes the closest: the largest real identity left for a count none
can give, then the missing images one at a time over the chosen identities that have images to spare, never
more than an identity has; what is still missing is the shortfall.
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

DISTRIBUTION = "synthetic per-identity counts"


def _spread(counts: list[int]) -> dict:
    return {"min": int(min(counts)), "max": int(max(counts)), "mean": float(np.mean(counts))} if counts else {}


def size_matched_subset(real: pd.DataFrame, target_counts: Iterable[int], seed: int) -> tuple[pd.DataFrame, dict]:
    """real: one row per real training image with `key` and `label`; target_counts: images per identity of the
    set to match. Returns (the chosen rows of `real`, in its order; what was asked, chosen and short)."""
    targets = sorted((int(t) for t in target_counts if int(t) > 0), reverse=True)
    rng = np.random.default_rng(seed)
    available = real.groupby("label").size()
    order = [available.index[i] for i in rng.permutation(len(available))]  # the seeded order of preference
    have = {label: int(available[label]) for label in order}
    chosen: dict = {}  # real label -> images taken (insertion order: the order it was chosen)
    left, below = list(order), 0
    for t in targets:
        if not left:
            break
        label = next((c for c in left if have[c] >= t), None)
        if label is None:  # no real identity has t images: the largest one left (the first drawn among equals)
            label = max(left, key=lambda c: have[c])
            below += 1
        left.remove(label)
        chosen[label] = min(t, have[label])
    missing = sum(targets) - sum(chosen.values())
    topped = 0
    while missing > 0:  # the closest total: one more image at a time to the chosen identities with some to spare
        spare = [c for c in chosen if chosen[c] < have[c]]
        if not spare:
            break
        for c in spare[:missing]:
            chosen[c] += 1
        topped += min(len(spare), missing)
        missing -= min(len(spare), missing)
    own = real["key"].astype(str).groupby(real["label"]).apply(sorted)
    keys = []
    for label, n in chosen.items():
        keys += [own[label][i] for i in sorted(rng.permutation(len(own[label]))[:n])]
    subset = real[real["key"].astype(str).isin(set(keys))]
    counts = list(chosen.values())
    short = {"images": int(sum(targets) - len(subset)), "identities": int(len(targets) - len(chosen))}
    record = {
        "target": {"images": int(sum(targets)), "identities": len(targets), "images_per_identity": _spread(targets)},
        "selected": {"images": int(len(subset)), "identities": len(chosen), "images_per_identity": _spread(counts)},
        "shortfall": short, "matched": short == {"images": 0, "identities": 0},
        "distribution": DISTRIBUTION, "exact_distribution": below == 0 and topped == 0 and short["identities"] == 0,
        "identities_with_too_few_images": below, "images_topped_up": topped,
        "real_available": {"images": int(len(real)), "identities": int(len(available))}, "seed": int(seed),
    }
    return subset, record
