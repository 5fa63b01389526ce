"""IResNet face-recognition backbone (insightface arcface_torch layout) with a BN-neck embedding.

Depth and width are parameters so one class serves the CPU demo (a few hundred thousand parameters at
56 px) and paper scale (IResNet-50, 112 px, 512-d):

    net = IResNet(layers=(3, 4, 14, 3), widths=(64, 128, 256, 512), input_size=112, embedding_dim=512)
    emb = net(images)            # images in [-1, 1], N x 3 x H x W -> N x 512 (not normalised)
"""
from __future__ import annotations

import torch
from torch import nn

PRESETS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 14, 3), 100: (3, 13, 30, 3)}


class IBasicBlock(nn.Module):
    """BN-conv-BN-PReLU-conv-BN residual block of IResNet."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(cin, eps=1e-5),
            nn.Conv2d(cin, cout, 3, 1, 1, bias=False),
            nn.BatchNorm2d(cout, eps=1e-5),
            nn.PReLU(cout),
            nn.Conv2d(cout, cout, 3, stride, 1, bias=False),
            nn.BatchNorm2d(cout, eps=1e-5),
        )
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout, eps=1e-5))

    def forward(self, x):
        identity = x if self.down is None else self.down(x)
        return self.body(x) + identity


class IResNet(nn.Module):
    def __init__(self, layers=(2, 2, 2, 2), widths=(64, 128, 256, 512), input_size: int = 112,
                 embedding_dim: int = 512, stem_width: int | None = None, dropout: float = 0.0):
        super().__init__()
        if len(layers) != len(widths):
            raise ValueError("layers and widths must have the same length")
        stem = stem_width or widths[0]
        self.input_size = input_size
        self.stem = nn.Sequential(nn.Conv2d(3, stem, 3, 1, 1, bias=False), nn.BatchNorm2d(stem, eps=1e-5), nn.PReLU(stem))
        blocks, cin = [], stem
        for n, w in zip(layers, widths):
            for i in range(n):
                blocks.append(IBasicBlock(cin, w, 2 if i == 0 else 1))
                cin = w
        self.blocks = nn.Sequential(*blocks)
        fmap = input_size
        for _ in layers:  # each stage halves the map with a stride-2, padding-1 conv: ceil(s / 2)
            fmap = (fmap + 1) // 2
        self.bn2 = nn.BatchNorm2d(cin, eps=1e-5)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(cin * fmap * fmap, embedding_dim)
        self.features = nn.BatchNorm1d(embedding_dim, eps=1e-5)  # BN-neck
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            x = nn.functional.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear",
                                          align_corners=False, antialias=True)
        x = self.bn2(self.blocks(self.stem(x)))
        return self.features(self.fc(self.dropout(torch.flatten(x, 1))))
