"""ID-Booth generator (METHODS.md section 3): a latent diffusion model with one LoRA per real identity.

The base model is a diffusers folder in the Stable Diffusion 2.1-base layout (vae, text_encoder, tokenizer,
unet, scheduler), loaded offline. `tiny_ldm` builds one from configs with random weights and a tokenizer
made here (byte-level, no merges), for tests and for machines without the real weights. Per identity, a
rank-4 LoRA on the UNet's attention projections is trained DreamBooth style on the identity's real images
("photo of sks person") with prior preservation ("photo of a person") and the (1 - t/T)^2-weighted triplet
identity loss (`idbooth_loss` is one step; tasks/train_idbooth.py the loop). `IDBoothPipeline` is the base
model plus a `LoraBank` (every identity's LoRA, stacked), saved and loaded as one diffusers folder:

    pipe = models.load_pipeline("artifacts/generator/pipeline")          # generator.method = idbooth
    images = pipe(["photo of sks person, looking left"], seeds=[7], identity=0, output_type="pil")
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from diffusers import DiffusionPipeline, ModelMixin
from diffusers.configuration_utils import ConfigMixin, register_to_config
from torch.nn import functional as F

from .id3 import initial_noise, make_scheduler, step_noise, to_output

INSTANCE_PROMPT = "photo of sks person"
CLASS_PROMPT = "photo of a person"
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def tiny_tokenizer(max_length: int = 77):
    """A CLIP tokenizer built here: every byte is a token (alone or word-final), no merges; any prompt encodes."""
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode  # GPT-2 / CLIP's byte -> character table
    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)} | {c + "</w>": len(chars) + i for i, c in enumerate(chars)}
    vocab |= {"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1}
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


def tiny_ldm(resolution: int = 32, width: int = 32, seed: int = 0):
    """A randomly initialised Stable Diffusion (2.1-base layout) pipeline of tiny components, from configs."""
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel
    torch.manual_seed(seed)
    tok = tiny_tokenizer()
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), hidden_size=width, intermediate_size=2 * width,
                                        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=tok.model_max_length,
                                        projection_dim=width, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                        pad_token_id=tok.pad_token_id))
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
                        up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(16, 32, 32), latent_channels=4,
                        norm_num_groups=8, sample_size=resolution)
    unet = UNet2DConditionModel(sample_size=resolution // 4, in_channels=4, out_channels=4, block_out_channels=(32, 64),
                                layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=width,
                                attention_head_dim=8, norm_num_groups=8)
    sched = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                          clip_sample=False, steps_offset=1)  # as Stable Diffusion 2.1-base's scheduler
    return StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tok, unet=unet, scheduler=sched, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)


def add_lora(unet, rank: int = 4, name: str = "default") -> list[torch.nn.Parameter]:
    """Freeze the UNet and attach a rank-`rank` LoRA to its attention projections; returns the LoRA parameters."""
    from peft import LoraConfig
    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=list(LORA_TARGETS)),
                     adapter_name=name)
    return [p for n, p in unet.named_parameters() if "lora" in n and p.requires_grad]


@torch.no_grad()
def encode_prompts(pipe, prompts: list[str]) -> torch.Tensor:
    ids = pipe.tokenizer(prompts, padding="max_length", max_length=pipe.tokenizer.model_max_length, truncation=True,
                         return_tensors="pt").input_ids.to(pipe.text_encoder.device)
    return pipe.text_encoder(ids)[0]


def idbooth_loss(pipe, x_instance: torch.Tensor, x_prior: torch.Tensor, encoder: Callable[[torch.Tensor], torch.Tensor],
                 generator: torch.Generator | None = None, margin: float = 1.0, id_weight: float = 1.0,
                 face_found: torch.Tensor | Callable[[torch.Tensor], torch.Tensor] | None = None,
                 prompts: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict:
    """L = MSE_instance + MSE_prior + (1 - t/T)^2 * max(0, d(a, p) - d(a, n) + margin), d = 1 - cos.

    a = f(decode(x0_hat)) of each noised instance latent, p = f(instance image), n = f(prior image) (paired by
    position). `encoder` maps [-1, 1] images to L2-normalised embeddings and is frozen; `face_found` (N,
    bool, or a detector called on the decoded x0_hat) marks where a face was found - the identity term
    skips the others. The denoiser target follows the scheduler's prediction type (epsilon or v)."""
    vae, unet, sched = pipe.vae, pipe.unet, pipe.scheduler
    n, dev = x_instance.shape[0], x_instance.device
    T = sched.config.num_train_timesteps
    if prompts is None:
        prompts = (encode_prompts(pipe, [INSTANCE_PROMPT]), encode_prompts(pipe, [CLASS_PROMPT]))
    with torch.no_grad():
        lat = vae.encode(torch.cat([x_instance, x_prior])).latent_dist.sample(generator) * vae.config.scaling_factor
    t = torch.randint(0, T, (len(lat),), generator=generator, device="cpu").to(dev)
    eps = torch.randn(lat.shape, generator=generator, device="cpu").to(dev, lat.dtype)
    noisy = sched.add_noise(lat, eps, t)
    ctx = torch.cat([prompts[0].expand(n, -1, -1), prompts[1].expand(len(x_prior), -1, -1)])
    pred = unet(noisy, t, encoder_hidden_states=ctx).sample
    v = sched.config.prediction_type == "v_prediction"
    target = sched.get_velocity(lat, eps, t) if v else eps
    mse_i, mse_p = F.mse_loss(pred[:n], target[:n]), F.mse_loss(pred[n:], target[n:])
    ab = sched.alphas_cumprod.to(dev)[t[:n]].view(-1, 1, 1, 1)
    x0_lat = ab.sqrt() * noisy[:n] - (1 - ab).sqrt() * pred[:n] if v else (noisy[:n] - (1 - ab).sqrt() * pred[:n]) / ab.sqrt()
    decoded = vae.decode(x0_lat / vae.config.scaling_factor).sample.clamp(-1, 1)
    if callable(face_found):
        face_found = face_found(decoded.detach())
    a = encoder(decoded)
    with torch.no_grad():
        p, neg = encoder(x_instance), encoder(x_prior)
    triplet = F.relu((1 - (a * p).sum(1)) - (1 - (a * neg).sum(1)) + margin)
    w = (1 - (t[:n] + 1).float() / T) ** 2  # t is 0-based in diffusers; METHODS uses 1..T
    keep = torch.ones(n, device=dev) if face_found is None else face_found.float().to(dev)
    ident = (w * triplet * keep).sum() / keep.sum().clamp(min=1)
    return {"loss": mse_i + mse_p + id_weight * ident, "mse_instance": mse_i.detach(), "mse_prior": mse_p.detach(),
            "triplet": ((triplet * keep).sum() / keep.sum().clamp(min=1)).detach(),
            "cos_anchor_positive": ((a * p).sum(1) * keep).sum().detach() / keep.sum().clamp(min=1)}


def _buffer(name: str) -> str:
    return name.replace(".", "__")  # buffer names cannot hold dots; parameter names do


class LoraBank(ModelMixin, ConfigMixin):
    """Every personalised identity's LoRA weights, stacked (identity x parameter shape), with the real
    identity labels they were trained on; a pipeline component, so it saves and loads with the folder."""

    @register_to_config
    def __init__(self, labels: Sequence[int] = (), shapes: dict | None = None, rank: int = 4,
                 targets: Sequence[str] = LORA_TARGETS):
        super().__init__()
        # the labels as a tensor too: a module with no tensor at all (an empty bank) has no dtype for diffusers
        self.register_buffer("label_ids", torch.tensor([int(x) for x in labels], dtype=torch.long).reshape(-1))
        for name, shape in (shapes or {}).items():
            self.register_buffer(_buffer(name), torch.zeros(len(labels), *shape))

    @classmethod
    def from_states(cls, labels: Sequence[int], states: list[dict[str, torch.Tensor]], rank: int) -> "LoraBank":
        """A bank from one LoRA state dict (parameter name -> tensor) per label."""
        bank = cls(labels=[int(x) for x in labels], shapes={k: list(v.shape) for k, v in states[0].items()}, rank=rank)
        for k in states[0]:
            getattr(bank, _buffer(k)).copy_(torch.stack([s[k] for s in states]))
        return bank

    def __len__(self) -> int:
        return len(self.config.labels)

    @torch.no_grad()
    def load_into(self, unet, index: int) -> None:
        """Set the UNet's LoRA parameters to identity `index`'s."""
        params = dict(unet.named_parameters())
        for name in self.config.shapes:
            params[name].copy_(getattr(self, _buffer(name))[index])


def bank_labels(pipeline_dir) -> list[int]:
    """The real identity labels an ID-Booth pipeline folder holds LoRAs for (its bank's config), in bank order."""
    import json
    from pathlib import Path
    return [int(x) for x in json.loads((Path(pipeline_dir) / "bank" / "config.json").read_text())["labels"]]


class IDBoothPipeline(DiffusionPipeline):
    """A Stable Diffusion (2.1-base layout) model and the LoRA bank of its personalised real identities.

    `pipe(prompts, seeds, identity=i)` renders bank identity i (None: the base model, e.g. prior images)
    with classifier-free guidance against the empty prompt; every image's noise comes from its own seed,
    so it never depends on its batch position."""

    METHOD = "idbooth"  # generator.method
    CONDITION = ("prompt",)  # the plan-row column that varies an identity's images

    def __init__(self, vae, text_encoder, tokenizer, unet, scheduler, bank: LoraBank):
        super().__init__()
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler, bank=bank)

    @property
    def resolution(self) -> int:
        return self.unet.config.sample_size * 2 ** (len(self.vae.config.block_out_channels) - 1)

    def _adapter(self, identity: int | None) -> None:
        has = getattr(self.unet, "peft_config", None)
        if identity is None:
            if has:
                self.unet.disable_adapters()
            return
        if not has:
            add_lora(self.unet, self.bank.config.rank)
        self.unet.enable_adapters()
        self.bank.load_into(self.unet, identity)

    @torch.no_grad()
    def __call__(self, prompts: Sequence[str], seeds: Sequence[int], identity: int | None = None,
                 num_inference_steps: int = 30, sampler: str = "ddim", guidance_scale: float = 5.0,
                 negative_prompt: str = "", output_type: str = "pt"):
        """N x 3 x H x W in [-1, 1] ("pt"), N x H x W x 3 uint8 ("np") or PIL images ("pil")."""
        if len(prompts) != len(seeds):
            raise ValueError(f"{len(prompts)} prompts for {len(seeds)} seeds")
        self._adapter(identity)
        dev = self.unet.device
        sched = make_scheduler(sampler, self.scheduler.config, clip=False)
        sched.set_timesteps(num_inference_steps)
        c, size = self.unet.config.in_channels, self.unet.config.sample_size
        lat = initial_noise(seeds, (c, size, size)).to(dev) * sched.init_noise_sigma
        ctx = encode_prompts(self, list(prompts))
        cfg = guidance_scale != 1.0
        if cfg:
            ctx = torch.cat([ctx, encode_prompts(self, [negative_prompt] * len(prompts))])
        noise = step_noise(sched, seeds)
        for t in sched.timesteps:
            inp = sched.scale_model_input(torch.cat([lat, lat]) if cfg else lat, t)
            pred = self.unet(inp, t, encoder_hidden_states=ctx).sample
            if cfg:
                cond, unc = pred.chunk(2)
                pred = unc + guidance_scale * (cond - unc)
            lat = sched.step(pred, t, lat, **noise).prev_sample
        x = self.vae.decode(lat / self.vae.config.scaling_factor).sample.clamp(-1, 1)
        return to_output(x, output_type)

    def render_rows(self, embeddings, anchors, rows: list[dict], batch_size: int, output_type: str = "pt",
                    num_inference_steps: int = 30, sampler: str = "ddim", guidance_scale: float = 5.0, **_unused) -> list:
        """Render plan rows (bank index "lora", "prompt", "seed") identity by identity, in fixed-shape batches
        (the last padded) as ID3Pipeline.render_rows does; `embeddings`, `anchors` and identity guidance do not
        apply (the LoRA holds the identity). A batch holds one identity's rows, so its shape is
        min(batch_size, that identity's row count): the same wherever the identity is rendered, as long as its
        rows come whole (the sample stage's blocks hold whole identities), and no batch is mostly padding."""
        images = []
        start = 0
        while start < len(rows):
            end = start
            while end < len(rows) and rows[end]["lora"] == rows[start]["lora"]:
                end += 1
            size = min(batch_size, end - start)
            for b in range(start, end, size):
                part = rows[b:min(b + size, end)]
                n = len(part)
                part = part + [part[-1]] * (size - n)
                out = self([r["prompt"] for r in part], [r["seed"] for r in part], int(part[0]["lora"]),
                           num_inference_steps, sampler, guidance_scale, output_type=output_type)
                images += list(out[:n])
            start = end
        return images
