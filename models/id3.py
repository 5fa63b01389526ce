"""ID3 generator parts: the identity+attribute conditioner, the ID-preserving loss and sampler.

METHODS.md section 1. The denoiser is a diffusers `UNet2DConditionModel`; `ID3Conditioner` maps
[identity embedding y, attributes s] through a 3-layer MLP to one cross-attention token and holds the
learned null token used for condition dropout and classifier-free guidance. `ID3Pipeline` bundles
unet + conditioner + scheduler in diffusers format, so outside the DAG a user can do:

    pipe = ID3Pipeline.from_pretrained("artifacts/generator")
    images = pipe(embeddings, attributes, seeds=[...], num_inference_steps=20)   # N x 3 x H x W in [-1, 1]
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from diffusers import DDIMScheduler, DDPMScheduler, DiffusionPipeline, DPMSolverMultistepScheduler, ModelMixin
from diffusers.configuration_utils import ConfigMixin, register_to_config
from torch import nn
from torch.nn import functional as F

from .identities import ATTRIBUTES, derive_seed
from .patch_unet import PatchUNet  # noqa: F401  (imported so from_pretrained resolves a saved PatchUNet unet)


class ID3Conditioner(ModelMixin, ConfigMixin):
    """[y, s] -> Linear-ReLU-Linear-ReLU-Linear -> one context token; plus a learned null token."""

    @register_to_config
    def __init__(self, embedding_dim: int = 512, attribute_dim: int = 3, hidden_dims: Sequence[int] = (512, 256, 768)):
        super().__init__()
        dims = [embedding_dim + attribute_dim, *hidden_dims]
        layers: list[nn.Module] = []
        for i in range(len(dims) - 1):
            layers.append(nn.Linear(dims[i], dims[i + 1]))
            if i < len(dims) - 2:
                layers.append(nn.ReLU())
        self.mlp = nn.Sequential(*layers)
        self.null_token = nn.Parameter(torch.zeros(1, 1, hidden_dims[-1]))

    @property
    def context_dim(self) -> int:
        return self.config.hidden_dims[-1]

    def forward(self, y: torch.Tensor, s: torch.Tensor, drop: torch.Tensor | None = None) -> torch.Tensor:
        """Return N x 1 x context_dim; rows where `drop` is True get the null token."""
        ctx = self.mlp(torch.cat([y, s], dim=1))[:, None, :]
        if drop is not None:
            ctx = torch.where(drop[:, None, None], self.null_token.to(ctx.dtype).expand_as(ctx), ctx)
        return ctx

    def null(self, n: int) -> torch.Tensor:
        return self.null_token.expand(n, -1, -1)


SCHEDULES = ("logistic", "linear", "constant")


def time_weight(t: torch.Tensor, T: int, kind: str = "logistic") -> torch.Tensor:
    """lambda_t = kappa_t for t in 1..T. "logistic": 0.5 * (1 - sigmoid(-t/T)), the paper's shape and the
    default; "linear": 1 - t/T (weight where x0_hat is sharp); "constant": 0.5."""
    t = t.float()
    if kind == "logistic":
        return 0.5 * (1 - torch.sigmoid(-t / T))
    if kind == "linear":
        return 1 - t / T
    if kind == "constant":
        return torch.full_like(t, 0.5)
    raise ValueError(f"unknown time schedule {kind!r}: use one of {SCHEDULES}")


def autocast(device: torch.device | str):
    """bf16 autocast on CUDA; a no-op elsewhere (CPU runs stay fp32 and bit-reproducible)."""
    dev = torch.device(device)
    return torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda")


def predict_x0(x_t: torch.Tensor, eps: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    ab = alpha_bar.view(-1, 1, 1, 1)
    return ((x_t - (1 - ab).sqrt() * eps) / ab.sqrt()).clamp(-1, 1)


def id3_loss(unet, conditioner: ID3Conditioner, encoder: Callable[[torch.Tensor], torch.Tensor], scheduler,
             x0: torch.Tensor, y: torch.Tensor, s: torch.Tensor, generator: torch.Generator | None = None,
             cond_drop: float = 0.1, lambda_scale: float = 1.0, kappa_scale: float = 1.0,
             schedule: str = "logistic", snr_gamma: float | None = None) -> dict:
    """The three-term ID-preserving loss. `encoder` maps images in [-1, 1] to L2-normalised embeddings
    and must be frozen (its parameters need no grad); gradients still flow through it to x0_hat.
    The noise term follows the scheduler's prediction type, with Min-SNR weighting when `snr_gamma` is set
    (`noise_mse`)."""
    n = x0.shape[0]
    T = scheduler.config.num_train_timesteps
    dev = x0.device
    t = torch.randint(0, T, (n,), generator=generator, device="cpu").to(dev)
    eps = torch.randn(x0.shape, generator=generator, device="cpu").to(dev, x0.dtype)
    x_t = scheduler.add_noise(x0, eps, t)
    drop = torch.rand(n, generator=generator, device="cpu").to(dev) < cond_drop
    with autocast(dev):
        ctx = conditioner(y, s, drop)
        out = unet(x_t, t, encoder_hidden_states=ctx).sample.float()
    mse, eps_hat = noise_mse(out, x0, x_t, eps, t, scheduler, snr_gamma)
    alpha_bar = scheduler.alphas_cumprod.to(dev)[t]
    x0_hat = predict_x0(x_t, eps_hat, alpha_bar)
    w = time_weight(t + 1, T, schedule)  # t is 0-based in diffusers; METHODS uses 1..T
    rec = ((x0_hat - x0) ** 2).flatten(1).mean(1)
    keep = (~drop).float()  # the identity terms only make sense where the condition was given
    # kappa_scale = 0 (the "no identity loss" ablation): the similarity is still logged, without a backward pass
    with torch.set_grad_enabled(bool(kappa_scale) and torch.is_grad_enabled()), autocast(dev):
        idsim = (encoder(x0_hat).float() * y).sum(1)
    loss = mse + (lambda_scale * w * rec).mean() - (kappa_scale * w * idsim * keep).sum() / keep.sum().clamp(min=1)
    return {"loss": loss, "mse": mse.detach(), "rec": rec.mean().detach(), "id": (idsim * keep).sum().detach() / keep.sum().clamp(min=1)}


PREDICTIONS = ("epsilon", "v_prediction")


def to_eps(out: torch.Tensor, x_t: torch.Tensor, alpha_bar: torch.Tensor, prediction_type: str = "epsilon") -> torch.Tensor:
    """The UNet's output as a noise estimate. "v_prediction" (Salimans & Ho 2022) predicts v = sqrt(ab) eps -
    sqrt(1 - ab) x0, so eps = sqrt(1 - ab) x_t + sqrt(ab) v: near pure noise the estimate leans on x_t itself, and
    x0_hat = sqrt(ab) x_t - sqrt(1 - ab) v never divides a small error by sqrt(ab), which makes an epsilon model's
    first sampling steps clip to saturated noise until it is well trained. Samplers then work on eps only."""
    if prediction_type == "epsilon":
        return out
    if prediction_type != "v_prediction":
        raise ValueError(f"unknown prediction type {prediction_type!r}: use one of {PREDICTIONS}")
    ab = alpha_bar.view(-1, 1, 1, 1)
    return (1 - ab).sqrt() * x_t + ab.sqrt() * out


def noise_mse(out: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, eps: torch.Tensor, t: torch.Tensor, scheduler,
              snr_gamma: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(the denoising loss, eps_hat) for the scheduler's prediction type: MSE to eps or to v, each sample
    weighted by Min-SNR (Hang et al. 2023) when `snr_gamma` is set: min(SNR, gamma) / SNR for epsilon,
    min(SNR, gamma) / (SNR + 1) for v (the same weight on x0's error), SNR = ab / (1 - ab). Nearly clean
    steps, which teach only texture, then stop dominating, and a small generator learns a face's layout sooner."""
    ptype = scheduler.config.prediction_type
    ab = scheduler.alphas_cumprod.to(x0.device)[t]
    target = eps if ptype == "epsilon" else scheduler.get_velocity(x0, eps, t)
    per = ((out - target) ** 2).flatten(1).mean(1)
    if snr_gamma:
        snr = ab / (1 - ab)
        per = per * snr.clamp(max=snr_gamma) / (snr if ptype == "epsilon" else snr + 1)
    return per.mean(), to_eps(out, x_t, ab, ptype)


SAMPLERS = ("ddim", "dpmsolver++", "ddpm")


def make_scheduler(kind: str, config: dict, clip: bool = True):
    """DDIM, DPM-Solver++ or ancestral DDPM (the reference: one denoiser call per training step, usually
    all T) from the training (DDPM) scheduler config; trailing spacing starts at t = T-1. They step on noise
    estimates (`to_eps` converts a v-prediction model's output first). `clip` keeps x0
    in the pixel range [-1, 1]; latent models (ID-Booth) sample unclipped."""
    if kind == "ddpm":
        return DDPMScheduler.from_config(config, clip_sample=clip, timestep_spacing="trailing", prediction_type="epsilon")
    if kind == "ddim":
        return DDIMScheduler.from_config(config, clip_sample=clip, set_alpha_to_one=False, timestep_spacing="trailing",
                                         prediction_type="epsilon")
    if kind == "dpmsolver++":
        # x0 clipped to the data range, as DDIM's clip_sample does (thresholding with a maximum of 1 is a static
        # clip): unclipped, 90% of the demo generator's pixels saturate (benchmarks/sampler_sweep.py)
        return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++", solver_order=2,
                                                        timestep_spacing="trailing", thresholding=clip,
                                                        sample_max_value=1.0, prediction_type="epsilon")
    raise ValueError(f"unknown sampler {kind!r}: use one of {SAMPLERS}")


def initial_noise(seeds: Sequence[int], shape: tuple[int, int, int]) -> torch.Tensor:
    """Per-image noise from per-image seeds: an image never depends on its batch position."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds])


def step_noise(scheduler, seeds: Sequence[int]) -> dict:
    """scheduler.step kwargs: a stochastic sampler (DDPM) draws each image's per-step noise from a generator
    of its own seed, so its images too never depend on batch position; deterministic ones take nothing."""
    if not isinstance(scheduler, DDPMScheduler):
        return {}
    return {"generator": [torch.Generator().manual_seed(derive_seed(int(s), "step-noise")) for s in seeds]}


def id3_sample(unet, conditioner: ID3Conditioner, scheduler, y: torch.Tensor, s: torch.Tensor, seeds: Sequence[int],
               num_inference_steps: int = 20, guidance_scale: float = 1.0, id_weight: float = 0.0,
               beta: float = 0.0, encoder: Callable[[torch.Tensor], torch.Tensor] | None = None,
               others: torch.Tensor | None = None, exclude: torch.Tensor | None = None,
               guidance_schedule: str = "x0", guidance_gradient: str = "xt", guidance_substeps: int = 1,
               prediction_type: str = "epsilon") -> torch.Tensor:
    """ID-preserving sampling with the adjusted gradient field (`prediction_type`: what the UNet predicts, `to_eps`).

    eps~ = eps - w_t * sqrt(1 - alpha_bar_t) * grad_x_t [<y, f(x0_hat)> - beta * max_j <y_j, f(x0_hat)>]

    w_t = id_weight ("constant", the formula read literally) or id_weight * alpha_bar_t / (1 - alpha_bar_t)
    ("x0", default): the implied step on x0_hat is (1 - ab)/ab * w_t * grad_x0_hat, which with a constant
    w_t is ~1e4 times larger at the first DDIM step than at the last and overshoots (measured: the
    cosine to the target turns negative); the "x0" weight makes it id_weight * grad_x0_hat at every step.
    `others` (M x D) are the identities for the reversed term (e.g. all anchors); `exclude` (N x M, bool)
    marks, per image, the entries of its own identity, which the max must skip.

    guidance_gradient "xt" (default) takes grad_x_t as written, back through the UNet; "x0" takes the gradient
    at x0_hat and moves x0_hat by the step above `guidance_substeps` times, with no backward pass through the
    UNet (~2x faster, weaker per unit of id_weight: benchmarks/sampler_sweep.py --variant).
    """
    if guidance_gradient not in ("xt", "x0") or guidance_substeps < 1:
        raise ValueError(f"guidance_gradient {guidance_gradient!r} / guidance_substeps {guidance_substeps}: use 'xt' or 'x0', and >= 1")
    dev = next(unet.parameters()).device
    size = unet.config.sample_size
    x = initial_noise(seeds, (unet.config.in_channels, size, size)).to(dev)
    y, s = y.to(dev), s.to(dev)
    scheduler.set_timesteps(num_inference_steps)
    x = x * scheduler.init_noise_sigma
    with torch.no_grad():
        ctx = conditioner(y, s)
        null = conditioner.null(len(seeds)).to(ctx.dtype)
    if id_weight and encoder is None:
        raise ValueError("id_weight > 0 needs an identity encoder")
    alphas = scheduler.alphas_cumprod.to(dev)
    noise = step_noise(scheduler, seeds)
    through_unet = bool(id_weight) and guidance_gradient == "xt"

    def score(emb: torch.Tensor) -> torch.Tensor:
        s = (emb * y).sum(1)
        if beta and others is not None and len(others):
            sims = emb @ others.to(dev).T
            if exclude is not None:
                sims = sims.masked_fill(exclude.to(dev), -math.inf)
            s = s - beta * sims.max(1).values.clamp(min=-1)
        return s

    for t in scheduler.timesteps:
        tt = torch.full((x.shape[0],), int(t), device=dev, dtype=torch.long)
        ab = alphas[tt]
        w = id_weight * (ab / (1 - ab) if guidance_schedule == "x0" else torch.ones_like(ab))
        # unguided, or guided by the gradient at x0_hat, the UNet call needs no autograd: inference_mode gives the
        # same bytes as no_grad, 1.01-1.30x faster (benchmarks/optimisations.py); through the UNet it needs it on
        with torch.enable_grad() if through_unet else torch.inference_mode():
            x_in = x.detach().requires_grad_(through_unet)
            with autocast(dev):
                if guidance_scale != 1.0:
                    both = unet(torch.cat([x_in, x_in]), torch.cat([tt, tt]), encoder_hidden_states=torch.cat([ctx, null])).sample
                    eps_c, eps_u = both.float().chunk(2)
                    eps = eps_u + guidance_scale * (eps_c - eps_u)
                else:
                    eps = unet(x_in, tt, encoder_hidden_states=ctx).sample.float()
            eps = to_eps(eps, x_in, ab, prediction_type)  # linear in the output at fixed x_t: after CFG as before it
            if through_unet:
                with autocast(dev):
                    emb = encoder(predict_x0(x_in, eps, ab)).float()
                grad = torch.autograd.grad(score(emb).sum(), x_in)[0]
                eps = eps.detach() - (w * (1 - ab).sqrt()).view(-1, 1, 1, 1) * grad
        if id_weight and not through_unet:
            # the UNet's Jacobian dropped (grad_x_t ~ grad_x0_hat / sqrt(ab)): each substep moves x0_hat by
            # w_t (1 - ab) / ab * grad_x0_hat, the move the formula above makes, without a backward pass
            # through the UNet; eps~ is then the noise that x_t and the moved x0_hat imply
            a = ab.view(-1, 1, 1, 1)
            x0 = predict_x0(x, eps.clone(), ab)
            for _ in range(guidance_substeps):
                with torch.enable_grad():
                    x0 = x0.detach().requires_grad_(True)
                    with autocast(dev):
                        emb = encoder(x0).float()
                    grad = torch.autograd.grad(score(emb).sum(), x0)[0]
                x0 = (x0.detach() + (w.view(-1, 1, 1, 1) * (1 - a) / a) * grad).clamp(-1, 1)
            eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
        x = scheduler.step(eps.detach(), t, x, **noise).prev_sample
    return x.clamp(-1, 1)


def to_output(x: torch.Tensor, output_type: str):
    """A pipeline's N x 3 x H x W batch in [-1, 1] as "pt" (itself), "np" (N x H x W x 3 uint8) or "pil"."""
    if output_type == "pt":
        return x
    arr = ((x.float().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    if output_type == "np":
        return arr
    if output_type == "pil":
        from PIL import Image
        return [Image.fromarray(a) for a in arr]
    raise ValueError(f"unknown output_type {output_type!r}: use 'pt', 'np' or 'pil'")


class ID3Pipeline(DiffusionPipeline):
    """unet + conditioner + scheduler, saved and loaded with save_pretrained / from_pretrained.

    `pipe(embeddings, attributes, seeds)` renders given identity embeddings; `pipe.sample_anchors(...)`
    does METHODS.md steps 2-4 from an anchor file (e.g. artifacts/sample/anchors.npy) outside the DAG.
    """

    METHOD = "id3"  # generator.method
    CONDITION = ATTRIBUTES  # the plan-row columns fed to the conditioner beside the identity embedding

    def __init__(self, unet, conditioner: ID3Conditioner, scheduler):
        super().__init__()
        self.register_modules(unet=unet, conditioner=conditioner, scheduler=scheduler)

    @torch.no_grad()
    def __call__(self, embeddings: torch.Tensor, attributes: torch.Tensor, seeds: Sequence[int],
                 num_inference_steps: int = 20, sampler: str = "ddim", guidance_scale: float = 1.0,
                 id_weight: float = 0.0, beta: float = 0.0, encoder=None, others=None, exclude=None,
                 guidance_schedule: str = "x0", guidance_gradient: str = "xt", guidance_substeps: int = 1,
                 output_type: str = "pt"):
        """N x 3 x H x W in [-1, 1] ("pt"), N x H x W x 3 uint8 ("np") or a list of PIL images ("pil").
        `encoder` maps [-1, 1] images to embeddings (normalised here); it is needed when id_weight > 0."""
        sched = make_scheduler(sampler, self.scheduler.config)
        f = (lambda img: F.normalize(encoder(img), dim=1)) if encoder is not None else None
        dev = self.unet.device
        x = id3_sample(self.unet, self.conditioner, sched, F.normalize(torch.as_tensor(embeddings).float(), dim=1).to(dev),
                       torch.as_tensor(attributes).float().to(dev), seeds, num_inference_steps, guidance_scale, id_weight,
                       beta, f, others, exclude, guidance_schedule, guidance_gradient, guidance_substeps,
                       self.scheduler.config.prediction_type)
        return to_output(x, output_type)

    def sample_anchors(self, anchors, attribute_pool, embeddings_per_identity: int = 25, images_per_embedding: int = 2,
                       v_low: float = 0.7, v_high: float = 0.9, seed: int = 0, identities: Sequence[int] | None = None,
                       batch_size: int = 64, output_type: str = "pil", **sampling) -> tuple[list, list[dict]]:
        """Images of synthetic identities around anchors (an N x D array or a .npy path).

        Returns (images, rows): one row per image with its identity, embedding index, seed and attributes.
        The same (anchors, seed) give the same images for any subset of `identities`, as in the DAG, when
        `batch_size` matches. `sampling`: num_inference_steps, sampler, guidance_scale, id_weight, beta,
        encoder, guidance_schedule (see __call__)."""
        import numpy as np
        from .identities import identity_embeddings, plan_rows
        w = np.load(anchors) if isinstance(anchors, (str, bytes)) or hasattr(anchors, "__fspath__") else np.asarray(anchors)
        y = identity_embeddings(w, embeddings_per_identity, v_low, v_high, seed)
        rows = plan_rows(len(w), embeddings_per_identity, images_per_embedding, attribute_pool, seed, identities)
        return self.render_rows(y, w, rows, batch_size, output_type=output_type, **sampling), rows

    def render_rows(self, embeddings, anchors, rows: list[dict], batch_size: int, output_type: str = "pt",
                    **sampling) -> list:
        """Render plan rows (identity, embedding, seed, yaw/pitch/roll) in fixed-shape batches.
        `embeddings` is n x m x D (per identity, per embedding); `anchors` (n x D) are the identities the
        reversed term pushes away from, skipping each image's own."""
        import numpy as np
        y = torch.as_tensor(np.asarray(embeddings), dtype=torch.float32)
        others = F.normalize(torch.as_tensor(np.asarray(anchors), dtype=torch.float32), dim=1).to(self.unet.device)
        images = []
        for b in range(0, len(rows), batch_size):
            part = rows[b:b + batch_size]
            n = len(part)
            # every batch has exactly batch_size rows (the last padded with repeats): CPU kernels pick their
            # reduction order by batch shape, so a fixed shape keeps an image's bytes independent of the subset
            part = part + [part[-1]] * (batch_size - n)
            emb = torch.stack([y[r["identity"], r["embedding"]] for r in part])
            att = torch.tensor([[r[c] for c in self.CONDITION] for r in part], dtype=torch.float32)
            own = torch.zeros(len(part), len(others), dtype=torch.bool)
            own[torch.arange(len(part)), torch.tensor([r["identity"] for r in part])] = True
            out = self(emb, att, [r["seed"] for r in part], others=others, exclude=own, output_type=output_type, **sampling)
            images += list(out[:n])
        return images
