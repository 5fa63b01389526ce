"""Per-identity geometry of embeddings, shared by the package filter, the quality metrics and the judge."""
from __future__ import annotations

import numpy as np


def centres(emb: np.ndarray, identity: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted identity ids, their L2-normalised mean embeddings)."""
    identity = np.asarray(identity)
    ids = np.unique(identity)
    c = np.stack([emb[identity == i].mean(0) for i in ids]) if len(ids) else np.zeros((0, emb.shape[1]))
    return ids, c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)


def cos_to_centre(emb: np.ndarray, identity: np.ndarray) -> np.ndarray:
    """Cosine of each (unit) embedding to the normalised mean of its identity's embeddings."""
    identity = np.asarray(identity)
    ids, c = centres(emb, identity)
    return np.einsum("ij,ij->i", emb, c[np.searchsorted(ids, identity)])
