"""Synthetic identities from anchors (METHODS.md section 1, steps 2-4): per-identity embeddings, attribute
draws and per-image seeds. Pure numpy, shared by the sample stage and `ID3Pipeline.sample_anchors`.

    y = identity_embeddings(anchors, m, v_low, v_high, seed)       # (n, m, d), <y_ij, w_i> in [v_low, v_high]
    rows = plan_rows(n, m, k, attribute_pool, seed)                # one dict per image: key, seeds, attributes
    rows = plan_similarity_rows(n, k, sims, seed)                  # CemiFace: one similarity m per image instead
    rows = plan_prompt_rows(n, k, prompt, poses, backgrounds, seed)  # ID-Booth: one prompt per image instead

Every seed is derive_seed(global seed, kind, identity, embedding[, image]): never a batch position, so
any subset of identities regenerates byte-identically.
"""
from __future__ import annotations

import hashlib

import numpy as np

ATTRIBUTES = ("yaw", "pitch", "roll", "age")  # ID3's attribute condition s, each in [-1, 1]
AGE_CENTRE, AGE_SCALE = 45.0, 35.0  # years -> [-1, 1]: 10 -> -1, 80 (the age model's top class) -> 1


def attribute_pool(frame) -> np.ndarray:
    """The align stage's attribute table (yaw, pitch, roll in [-1, 1]; age in years) as the N x 4 pool ID3
    conditions on and samples from. A table without ages (align.age_estimator: null) conditions every face
    on the centre age, 0: the generator then simply learns no age."""
    cols = [np.asarray(frame[c], dtype=np.float64) for c in ATTRIBUTES[:3]]
    age = np.asarray(frame["age"], dtype=np.float64) if "age" in frame else np.full(len(cols[0]), np.nan)
    age = np.clip((age - AGE_CENTRE) / AGE_SCALE, -1, 1)
    return np.stack(cols + [np.where(np.isfinite(age), age, 0.0)], axis=1)


def derive_seed(*parts) -> int:
    """A 63-bit seed from any tuple of ids, independent of batch position or process."""
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:8], "big") >> 1


def identity_embeddings(anchors: np.ndarray, m: int, v_low: float, v_high: float, seed: int) -> np.ndarray:
    """y_ij = v w_i + sqrt(1 - v^2) u, u a random unit vector orthogonal to w_i, v ~ U[v_low, v_high]."""
    anchors = np.asarray(anchors, dtype=np.float64)
    anchors = anchors / np.linalg.norm(anchors, axis=1, keepdims=True)
    n, d = anchors.shape
    out = np.empty((n, m, d))
    for i in range(n):
        for j in range(m):
            rng = np.random.default_rng(derive_seed(seed, "embedding", i, j))
            u = rng.standard_normal(d)
            u -= (u @ anchors[i]) * anchors[i]
            u /= np.linalg.norm(u)
            v = rng.uniform(v_low, v_high)
            out[i, j] = v * anchors[i] + np.sqrt(1 - v * v) * u
    return out


def plan_rows(n: int, m: int, k: int, attribute_pool: np.ndarray, seed: int, identities=None) -> list[dict]:
    """One row per image: each identity draws its age and each (identity, embedding) its head pose from the
    real pool (rows of ATTRIBUTES, `attribute_pool`), and each image its own noise seed. Age is the
    identity's (one person, one age); pose varies between its embeddings."""
    pool = np.asarray(attribute_pool, dtype=np.float64)
    if pool.ndim != 2 or pool.shape[1] != len(ATTRIBUTES) or not len(pool):
        raise ValueError(f"attribute pool must be a non-empty N x {len(ATTRIBUTES)} array, got shape {pool.shape}")
    rows, age = [], ATTRIBUTES.index("age")
    for i in (range(n) if identities is None else identities):
        years = pool[np.random.default_rng(derive_seed(seed, "age", i)).integers(len(pool)), age]
        for j in range(m):
            a = pool[np.random.default_rng(derive_seed(seed, "attribute", i, j)).integers(len(pool))].copy()
            a[age] = years
            for r in range(k):
                rows.append({"key": f"id{i:06d}_{j:03d}_{r:03d}", "identity": int(i), "embedding": j, "image": r,
                             "seed": derive_seed(seed, "image", i, j, r), **{a_: float(v) for a_, v in zip(ATTRIBUTES, a)}})
    return rows


def plan_similarity_rows(n: int, k: int, sims, seed: int, identities=None) -> list[dict]:
    """CemiFace's plan: one row per image of each inquiry identity (its only embedding, index 0), image r at
    similarity m = sims[r % len(sims)], seeded as plan_rows seeds its images."""
    sims = [float(v) for v in sims]
    if not sims or any(not -1 <= v <= 1 for v in sims):
        raise ValueError(f"similarities m must be a non-empty list in [-1, 1], got {sims}")
    return [{"key": f"id{i:06d}_000_{r:03d}", "identity": int(i), "embedding": 0, "image": r,
             "seed": derive_seed(seed, "image", i, 0, r), "m": sims[r % len(sims)]}
            for i in (range(n) if identities is None else identities) for r in range(k)]


def plan_prompt_rows(n: int, k: int, prompt: str, poses, backgrounds, seed: int, identities=None) -> list[dict]:
    """ID-Booth's plan: one row per image of each personalised identity (bank index = identity), its prompt
    `prompt` plus a pose wording and a background drawn per image ("" adds nothing), seeded as plan_rows."""
    poses, backgrounds = list(poses) or [""], list(backgrounds) or [""]
    rows = []
    for i in (range(n) if identities is None else identities):
        for r in range(k):
            rng = np.random.default_rng(derive_seed(seed, "prompt", i, r))
            words = [prompt, poses[rng.integers(len(poses))], backgrounds[rng.integers(len(backgrounds))]]
            rows.append({"key": f"id{i:06d}_000_{r:03d}", "identity": int(i), "embedding": 0, "image": r, "lora": int(i),
                         "seed": derive_seed(seed, "image", i, 0, r), "prompt": ", ".join(w for w in words if w)})
    return rows
