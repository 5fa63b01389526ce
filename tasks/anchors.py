"""Identity anchors and per-identity embeddings for synthetic identities (METHODS.md sections 1, 2).

    anchors, stats = tammes_anchors(n, real_embeddings, real_centres, privacy_threshold, iters, seed)
    y = identity_embeddings(anchors, m, v_low, v_high, seed)     # (n, m, d), <y, w_i> in [v_low, v_high]
    inquiries, stats = real_inquiries(n, real_embeddings, real_labels, max_cos, seed)   # CemiFace's real inquiries

Tammes-style: start from a Gaussian fitted to real embeddings, then projected gradient descent on a
soft-max repulsion energy, with a penalty that keeps anchors inside the cone real embeddings occupy
(cosine to their mean direction not below its 5th percentile over real faces). The privacy margin is
hard: a penalty steers anchors below `privacy_threshold` cosine to every real training identity centre,
then `enforce_margin` projects any anchor still above it onto the boundary, and the result is checked
(an impossible margin is an error, never a silently leaky anchor set).
"""
from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from models.identities import derive_seed, identity_embeddings  # noqa: F401  (re-exported)

MARGIN = 0.02  # anchors end at least this far below the privacy threshold


def random_anchors(n: int, dim: int, seed: int) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, dim, generator=g, dtype=torch.float64), dim=1).numpy()


def min_angle_deg(x: np.ndarray) -> float:
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    c = x @ x.T
    np.fill_diagonal(c, -1)
    return float(np.degrees(np.arccos(np.clip(c.max(), -1, 1))))


def tammes_anchors(n: int, real: np.ndarray | None, centres: np.ndarray | None, privacy_threshold: float,
                   iters: int, seed: int, dim: int | None = None, temperature: float = 20.0,
                   lr: float = 0.05) -> tuple[np.ndarray, dict]:
    g = torch.Generator().manual_seed(seed)
    if real is not None and len(real) > 1:
        r = torch.as_tensor(real, dtype=torch.float64)
        mu = r.mean(0)
        cov = torch.cov(r.T) + 1e-6 * torch.eye(r.shape[1], dtype=torch.float64)
        x = mu + torch.randn(n, r.shape[1], generator=g, dtype=torch.float64) @ torch.linalg.cholesky(cov).T
        direction = F.normalize(mu, dim=0)
        cone = float(torch.quantile(F.normalize(r, dim=1) @ direction, 0.05))
    else:
        x = torch.randn(n, dim, generator=g, dtype=torch.float64)
        direction, cone = None, None
    x = F.normalize(x, dim=1)
    c_t = torch.as_tensor(centres, dtype=torch.float64) if centres is not None and len(centres) else None
    if c_t is not None:
        c_t = F.normalize(c_t, dim=1)
    mask = torch.eye(n, dtype=torch.bool)
    for _ in range(iters):
        x.requires_grad_(True)
        cos = (x @ x.T).masked_fill(mask, -2.0)
        energy = torch.logsumexp(temperature * cos.flatten(), 0) / temperature  # smooth max pairwise cosine
        if direction is not None:
            energy = energy + F.relu(cone - x @ direction).pow(2).sum() * 10
        if c_t is not None:
            energy = energy + F.relu(x @ c_t.T - (privacy_threshold - 0.02)).pow(2).sum() * 10
        grad, = torch.autograd.grad(energy, x)
        with torch.no_grad():
            grad = grad - (grad * x).sum(1, keepdim=True) * x  # tangent to the sphere
            x = F.normalize(x - lr * grad / grad.norm(dim=1, keepdim=True).clamp(min=1e-12), dim=1)
        lr *= 0.995
    x = x.detach()
    stats = {"min_angle_deg": min_angle_deg(x.numpy()), "cone_cos": cone}
    if c_t is not None:
        x, moved = enforce_margin(x, c_t, privacy_threshold)
        stats |= {"min_angle_deg": min_angle_deg(x.numpy()), "max_cos_to_real_identity": float((x @ c_t.T).max()),
                  "projected_for_privacy": moved}
    return x.numpy(), stats


def private_random_anchors(n: int, dim: int, centres: np.ndarray | None, privacy_threshold: float,
                           seed: int) -> tuple[np.ndarray, dict]:
    """The ablation's random anchors (no repulsion) under the same hard privacy margin as Tammes, with
    the same stats."""
    x = torch.as_tensor(random_anchors(n, dim, seed))
    stats = {"min_angle_deg": min_angle_deg(x.numpy()), "cone_cos": None}
    if centres is not None and len(centres):
        c_t = F.normalize(torch.as_tensor(centres, dtype=torch.float64), dim=1)
        x, moved = enforce_margin(x, c_t, privacy_threshold)
        stats |= {"min_angle_deg": min_angle_deg(x.numpy()), "max_cos_to_real_identity": float((x @ c_t.T).max()),
                  "projected_for_privacy": moved}
    return x.numpy(), stats


def enforce_margin(x: torch.Tensor, centres: torch.Tensor, threshold: float, passes: int = 200) -> tuple[torch.Tensor, int]:
    """Project every anchor above `threshold - MARGIN` cosine to a real centre back below it (the smallest
    move along that centre), repeating while a projection pushes it over another centre. Returns the
    anchors and how many were moved; raises when the caps of the real identities leave no room."""
    limit = threshold - MARGIN
    moved = torch.zeros(len(x), dtype=torch.bool)
    for _ in range(passes):
        cos = x @ centres.T
        worst, j = cos.max(1)
        bad = worst > limit
        if not bad.any():
            return x, int(moved.sum())
        moved |= bad
        c = centres[j[bad]]
        # rotate towards the orthogonal part, keeping its direction: the cosine to c becomes exactly `target`
        target = limit - 1e-3
        ortho = F.normalize(x[bad] - worst[bad][:, None] * c, dim=1)
        x[bad] = target * c + (1 - target ** 2) ** 0.5 * ortho
    cos = x @ centres.T
    raise ValueError(f"privacy margin unreachable: {int((cos.max(1).values > limit).sum())} anchor(s) stay above cosine "
                     f"{limit:.3f} to a real training identity after {passes} projections (raise sample.privacy_threshold "
                     f"or use fewer identities)")


def real_inquiries(n: int, embeddings: np.ndarray, labels: np.ndarray, max_cos: float, seed: int) -> tuple[np.ndarray, dict]:
    """CemiFace's real inquiry faces: at most one face per real identity, taken greedily in a seeded random
    order while its cosine to every face already taken stays below `max_cos` (the paper: 0.3). Returns the
    n inquiry embeddings and stats; raises when the real faces cannot give n such identities."""
    emb = np.asarray(embeddings, dtype=np.float64)
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    order = np.random.default_rng(derive_seed(seed, "inquiries")).permutation(len(emb))
    taken, seen = [], set()
    for i in order:
        if labels[i] in seen or (taken and float((emb[taken] @ emb[i]).max()) >= max_cos):
            continue
        taken.append(i)
        seen.add(labels[i])
        if len(taken) == n:
            break
    if len(taken) < n:
        raise ValueError(f"sample.cemiface: only {len(taken)} real training faces of distinct identities are pairwise below "
                         f"cosine {max_cos} (need sample.num_identities = {n}): lower num_identities, raise "
                         "cemiface.inquiry_max_cosine or use inquiry: anchors")
    x = emb[taken]
    c = x @ x.T
    np.fill_diagonal(c, -1)
    return x, {"inquiry": "real", "max_pairwise_cos": float(c.max()) if n > 1 else None,
               "real_identities": [int(labels[i]) for i in taken]}
