"""CemiFace generator parts (METHODS.md section 2): the similarity conditioner, the SimMat loss, the pipeline.

The denoiser is the same diffusers `UNet2DConditionModel` as ID3's, with the timestep entering every
ResNet block as an AdaGN scale-shift (`resnet_time_scale_shift="scale_shift"`). `CemiConditioner` maps
an inquiry identity embedding C_id and a similarity m in [-1, 1] to one cross-attention token,
C_att = F2(concat(C_id, F1(m))). Sampling reuses ID3's loop (`models.id3.id3_sample`) with m in the
place of ID3's attributes, so DDIM / DPM-Solver++ / DDPM and per-image seeds behave the same:

    pipe = CemiFacePipeline.from_pretrained("artifacts/generator/pipeline")
    images = pipe(inquiry_embeddings, m=[0.0] * n, seeds=[...], num_inference_steps=20)   # N x 3 x H x W
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from diffusers import ModelMixin
from diffusers.configuration_utils import ConfigMixin, register_to_config
from torch import nn

from .id3 import ID3Pipeline, autocast, noise_mse, predict_x0


class CemiConditioner(ModelMixin, ConfigMixin):
    """(C_id, m) -> F2(concat(C_id, F1(m))), one context token; plus a learned null token (for guidance,
    which CemiFace does not use by default: it is trained only when cond_drop > 0)."""

    @register_to_config
    def __init__(self, embedding_dim: int = 512, sim_dim: int = 512, context_dim: int = 768):
        super().__init__()
        self.f1 = nn.Linear(1, sim_dim)
        self.f2 = nn.Linear(embedding_dim + sim_dim, context_dim)
        self.null_token = nn.Parameter(torch.zeros(1, 1, context_dim))

    @property
    def context_dim(self) -> int:
        return self.config.context_dim

    def forward(self, y: torch.Tensor, m: torch.Tensor, drop: torch.Tensor | None = None) -> torch.Tensor:
        """y: N x D (L2-normalised), m: N or N x 1 -> N x 1 x context_dim; rows where `drop` get the null token."""
        ctx = self.f2(torch.cat([y, self.f1(m.reshape(-1, 1).to(y.dtype))], dim=1))[:, None, :]
        if drop is not None:
            ctx = torch.where(drop[:, None, None], self.null_token.to(ctx.dtype).expand_as(ctx), ctx)
        return ctx

    def null(self, n: int) -> torch.Tensor:
        return self.null_token.expand(n, -1, -1)


def similarity_grid(step: float = 0.04) -> torch.Tensor:
    """{-1, -1 + step, ..., 1}: the values m is drawn from in training (a continuous m collapsed in the paper)."""
    n = round(2 / step)
    if abs(n * step - 2) > 1e-6:
        raise ValueError(f"similarity grid step {step} does not divide [-1, 1] evenly")
    return torch.linspace(-1, 1, n + 1)


def cemiface_loss(unet, conditioner: CemiConditioner, encoder: Callable[[torch.Tensor], torch.Tensor], scheduler,
                  x0: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None, sim_weight: float = 0.05,
                  grid_step: float = 0.04, cond_drop: float = 0.0, snr_gamma: float | None = None) -> dict:
    """L = ||eps - eps_theta||^2 + sim_weight * L_SimMat, self-reconstruction (no labels).

    y = f(x0) is the inquiry embedding of each training face; m is drawn per sample from the grid;
    cos = <f(x0), f(x0_hat)>, L_rec = (1 - cos)^2, L_sim = (m - cos)^2, gamma_t = t / T and
    L_SimMat = (1 - gamma_t) L_rec + gamma_t L_sim. `encoder` returns L2-normalised embeddings of [-1, 1]
    images and must be frozen; gradients flow through it to x0_hat."""
    n = x0.shape[0]
    T = scheduler.config.num_train_timesteps
    dev = x0.device
    t = torch.randint(0, T, (n,), generator=generator, device="cpu").to(dev)
    eps = torch.randn(x0.shape, generator=generator, device="cpu").to(dev, x0.dtype)
    grid = similarity_grid(grid_step)
    m = grid[torch.randint(0, len(grid), (n,), generator=generator, device="cpu")].to(dev)
    drop = torch.rand(n, generator=generator, device="cpu").to(dev) < cond_drop
    x_t = scheduler.add_noise(x0, eps, t)
    with autocast(dev):
        ctx = conditioner(y, m, drop)
        out = unet(x_t, t, encoder_hidden_states=ctx).sample.float()
    mse, eps_hat = noise_mse(out, x0, x_t, eps, t, scheduler, snr_gamma)  # the noise term as ID3's (models/id3.py)
    x0_hat = predict_x0(x_t, eps_hat, scheduler.alphas_cumprod.to(dev)[t])
    with torch.set_grad_enabled(bool(sim_weight) and torch.is_grad_enabled()), autocast(dev):
        cos = (encoder(x0_hat).float() * y).sum(1)
    gamma = (t + 1).float() / T  # t is 0-based in diffusers; METHODS uses 1..T
    rec, sim = (1 - cos) ** 2, (m - cos) ** 2
    keep = (~drop).float()  # a dropped condition has no inquiry to be similar to
    simmat = (((1 - gamma) * rec + gamma * sim) * keep).sum() / keep.sum().clamp(min=1)
    return {"loss": mse + sim_weight * simmat, "mse": mse.detach(), "simmat": simmat.detach(),
            "id": ((cos * keep).sum() / keep.sum().clamp(min=1)).detach(),
            "sim_err": ((m - cos).abs() * keep).sum().detach() / keep.sum().clamp(min=1)}


class CemiFacePipeline(ID3Pipeline):
    """unet + CemiConditioner + scheduler. `pipe(embeddings, m, seeds)` renders inquiry embeddings at
    similarity m; `render_rows` (inherited) renders plan rows that carry an "m" column."""

    METHOD = "cemiface"
    CONDITION = ("m",)

    def __call__(self, embeddings: torch.Tensor, m, seeds: Sequence[int], **sampling):
        """As ID3Pipeline.__call__, with m (a number or one per image) in the place of the attributes;
        the paper samples DDIM 20 steps at m = 0 and no identity guidance (id_weight 0)."""
        m = torch.as_tensor(m, dtype=torch.float32).reshape(-1, 1)
        if len(m) == 1:
            m = m.expand(len(seeds), 1)
        return super().__call__(embeddings, m, seeds, **sampling)

    def sample_anchors(self, anchors, images_per_identity: int = 8, m: Sequence[float] = (0.0,), seed: int = 0,
                       identities: Sequence[int] | None = None, batch_size: int = 64, output_type: str = "pil",
                       **sampling) -> tuple[list, list[dict]]:
        """Images of synthetic identities whose inquiry embeddings are `anchors` (N x D, or a .npy path, e.g.
        artifacts/sample/anchors.npy); image r of an identity is rendered at similarity m[r % len(m)].
        Returns (images, rows) as ID3Pipeline.sample_anchors does."""
        import numpy as np
        from .identities import plan_similarity_rows
        w = np.load(anchors) if isinstance(anchors, (str, bytes)) or hasattr(anchors, "__fspath__") else np.asarray(anchors)
        rows = plan_similarity_rows(len(w), images_per_identity, m, seed, identities)
        return self.render_rows(w[:, None, :], w, rows, batch_size, output_type=output_type, **sampling), rows
