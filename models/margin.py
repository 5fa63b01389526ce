"""The margin-loss family in one module (insightface CombinedMarginLoss form).

logit for the true class = s * (cos(m1 * theta + m2) - m3):
CosFace = (1, 0, 0.4), ArcFace = (1, 0.5, 0), SphereFace-like m1 > 1 is not supported.

    head = MarginHead(embedding_dim=512, num_classes=10572, kind="cosface")
    loss = head(embeddings, labels)
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

KINDS = {"cosface": (0.0, 0.4), "arcface": (0.5, 0.0)}


class MarginHead(nn.Module):
    def __init__(self, embedding_dim: int, num_classes: int, kind: str = "cosface", s: float = 64.0,
                 m_angular: float | None = None, m_additive: float | None = None):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"margin kind {kind!r} is not one of {sorted(KINDS)}")
        m2, m3 = KINDS[kind]
        self.m2 = m2 if m_angular is None else m_angular
        self.m3 = m3 if m_additive is None else m_additive
        self.s = s
        self.weight = nn.Parameter(torch.randn(num_classes, embedding_dim) * 0.01)

    def logits(self, emb: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        cos = F.linear(F.normalize(emb), F.normalize(self.weight)).clamp(-1 + 1e-7, 1 - 1e-7)
        if labels is None:
            return cos * self.s
        target = cos.gather(1, labels[:, None])
        if self.m2:
            theta = torch.acos(target)
            # keep the margin monotone when theta + m2 passes pi (insightface's easy-margin guard)
            target_m = torch.where(theta + self.m2 < math.pi, torch.cos(theta + self.m2), target - self.m2 * math.sin(self.m2))
        else:
            target_m = target
        target_m = target_m - self.m3
        return cos.scatter(1, labels[:, None], target_m) * self.s

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.logits(emb, labels), labels)
