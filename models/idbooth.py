"""ID-Booth generator parts (METHODS.md section 3): LoRA fine-tuning of a latent diffusion model per identity.

The base model is a diffusers folder in the Stable Diffusion 2.1-base layout (vae, text_encoder, tokenizer,
unet, scheduler), loaded offline. `tiny_ldm` builds one from configs with random weights and a tokenizer
made here (byte-level, no merges), for tests and for machines without the real weights. Per identity, a
rank-4 LoRA on the UNet's attention projections is trained DreamBooth style on the identity's real images
("photo of sks person") with prior preservation ("photo of a person") and the (1 - t/T)^2-weighted triplet
identity loss; `idbooth_loss` is one step's loss.

    pipe = tiny_ldm(resolution=32)                       # or StableDiffusionPipeline.from_pretrained(folder)
    params = add_lora(pipe.unet, rank=4)                 # the only trainable parameters
    out = idbooth_loss(pipe, x_instance, x_prior, encoder, generator)   # {"loss", "mse_instance", ...}
"""
from __future__ import annotations

from typing import Callable

import torch
from torch.nn import functional as F

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
                 face_found: torch.Tensor | None = None, prompts: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict:
    """L = MSE_instance + MSE_prior + (1 - t/T)^2 * max(0, d(a, p) - d(a, n) + margin), d = 1 - cos.

    a = f(decode(x0_hat)) of each noised instance latent, p = f(instance image), n = f(prior image) (paired by
    position). `encoder` maps [-1, 1] images to L2-normalised embeddings and is frozen; `face_found` (N,
    bool) marks the decoded x0_hat in which a face was found - the identity term skips the others."""
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
    mse_i, mse_p = F.mse_loss(pred[:n], eps[:n]), F.mse_loss(pred[n:], eps[n:])
    ab = sched.alphas_cumprod.to(dev)[t[:n]].view(-1, 1, 1, 1)
    x0_lat = (noisy[:n] - (1 - ab).sqrt() * pred[:n]) / ab.sqrt()
    decoded = vae.decode(x0_lat / vae.config.scaling_factor).sample.clamp(-1, 1)
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
