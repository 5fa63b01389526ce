"""Per-identity geometry of embeddings, shared by the package filter (encoder) and the judge (dlib)."""
from __future__ import annotations

import numpy as np


def cos_to_centre(emb: np.ndarray, identity: np.ndarray) -> np.ndarray:
    """Cosine of each (unit) embedding to the normalised mean of its identity's embeddings."""
    identity = np.asarray(identity)
    out = np.empty(len(emb))
    for i in np.unique(identity):
        sel = identity == i
        c = emb[sel].mean(0)
        out[sel] = emb[sel] @ (c / max(np.linalg.norm(c), 1e-12))
    return out
