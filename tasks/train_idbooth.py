"""Train the ID-Booth generator (METHODS.md section 3) on real aligned faces: a base latent diffusion model,
then one LoRA per real identity; resumable. Called by tasks/train_generator.train_generator for
generator.method = idbooth.

    pipe, stats = train_idbooth(shards, encoder, params["generator"], ckpt_dir, device, log, progress)
    pipe.save_pretrained("artifacts/generator/pipeline")      # models.IDBoothPipeline: base + LoraBank

1. Base model: generator.idbooth.base_model, a local diffusers folder in the Stable Diffusion 2.1-base
   layout (its weights stay frozen), or, when unset, models/idbooth.tiny_ldm pretrained here on the
   training faces: the VAE (reconstruction + KL) for vae_steps, then the UNet on "photo of a person" for
   base_steps, with the empty prompt for a generator.cond_drop share (the unconditional model CFG needs).
   No SD weights can be downloaded here, so the demo learns its own small base.
2. Prior images: prior_images renders of the class prompt by the base model (DreamBooth's class images),
   prior_steps steps at CFG prior_guidance; they are the prior-preservation targets and the triplet negatives.
3. Per identity - the first num_identities real training identities (by label) with at least min_images
   faces - a rank-`rank` LoRA from one shared initialisation, lora_steps of idbooth_loss on batches of
   lora_batch_size instance and as many prior images. With face_check the identity term counts only the
   decoded x0_hat in which the aligner's detector (MTCNN) finds a face.
Each phase checkpoints under ckpt_dir (the pretraining loops every checkpoint_every steps, the LoRAs one file
per finished identity), so a killed run resumes where it stopped.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from diffusers import UNet2DConditionModel
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch.nn import functional as F

from models.idbooth import (CLASS_PROMPT, INSTANCE_PROMPT, IDBoothPipeline, LoraBank, add_lora, encode_prompts,
                            idbooth_loss, tiny_ldm)
from models.identities import derive_seed
from .fr_train import loader
from .io import atomic_path
from .params import params_hash
from .shards import decode_image, read_tar
from .train_generator import to_resolution


def _checkpointed_loop(name: str, shards: list[Path], num_samples: int, modules: dict, params: list, steps: int,
                       step_fn: Callable, p: dict, ckpt_dir: Path, chash: str, log: Callable,
                       progress: Callable | None = None, span: tuple[float, float] = (0.0, 1.0)) -> dict:
    """AdamW over `params` for `steps` calls of step_fn(x, g) -> {"loss", ...} on shuffled training batches;
    checkpoints (modules, optimiser, step, RNG) atomically every checkpoint_every steps and resumes from them."""
    opt = torch.optim.AdamW(params, lr=p["lr"], weight_decay=0.0)
    g = torch.Generator().manual_seed(derive_seed(p["seed"], name))
    ckpt, step = ckpt_dir / f"{name}.pt", 0
    if ckpt.is_file():
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        if state["config_hash"] == chash:
            for k, m in modules.items():
                m.load_state_dict(state[k])
            opt.load_state_dict(state["opt"]); g.set_state(state["rng"]); step = state["step"]
            log(f"{name}: resumed from {ckpt} at step {step}")
    t0, start, last = time.time(), step, {}
    epoch = step * p["batch_size"] // max(num_samples, 1)
    while step < steps:
        for x, _, _ in loader(shards, p["batch_size"], p["seed"], epoch, 0):
            if step >= steps:
                break
            out = step_fn(x, g)
            opt.zero_grad(set_to_none=True)
            out["loss"].backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            step += 1
            last = {k: round(float(v.detach()), 5) for k, v in out.items()}
            if step % 50 == 0 or step == steps:
                rate = (step - start) * p["batch_size"] / max(time.time() - t0, 1e-9)
                log(f"{name}: step {step}/{steps} loss {last['loss']:.4f} {rate:.1f} img/s")
                if progress is not None:
                    progress(span[0] + (span[1] - span[0]) * step / steps)
            if step % p["checkpoint_every"] == 0 or step == steps:
                with atomic_path(ckpt) as tmp:
                    torch.save({"config_hash": chash, "step": step, "opt": opt.state_dict(), "rng": g.get_state(),
                                **{k: m.state_dict() for k, m in modules.items()}}, tmp)
        epoch += 1
    return {"steps": step, "resumed_from": start, "last": last}


def pretrain_base(pipe, shards: list[Path], num_samples: int, p: dict, ckpt_dir: Path, chash: str, device: str,
                  log: Callable, progress=None) -> dict:
    """The tiny LDM's VAE, then its UNet on the class prompt, on the training faces at the pipeline resolution."""
    res, vae, unet, sched = pipe.resolution, pipe.vae, pipe.unet, pipe.scheduler
    ip = p["idbooth"]
    pipe.text_encoder.requires_grad_(False)

    def vae_step(x, g):
        x = to_resolution(x, res).to(device)
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample(g)).sample
        mse = F.mse_loss(rec, x)
        kl = post.kl().mean() / x[0].numel()
        return {"loss": mse + ip["kl_weight"] * kl, "mse": mse, "kl": kl}

    vae.train()
    stats = {"vae": _checkpointed_loop("vae", shards, num_samples, {"vae": vae}, list(vae.parameters()), ip["vae_steps"],
                                       vae_step, p, ckpt_dir, chash, log, progress, (0.0, 0.2))}
    vae.eval().requires_grad_(False)
    # SD's scaling factor: unit-variance latents for the UNet, measured on training faces
    with torch.no_grad():
        x, _, _ = next(iter(loader(shards, min(256, num_samples), p["seed"], 0, 0)))
        std = float(vae.encode(to_resolution(x, res).to(device)).latent_dist.mean.std())
    vae.register_to_config(scaling_factor=1.0 / max(std, 1e-6))
    ctx, empty = encode_prompts(pipe, [CLASS_PROMPT]), encode_prompts(pipe, [""])

    def unet_step(x, g):
        x = to_resolution(x, res).to(device)
        flip = torch.rand(len(x), generator=g) < 0.5
        x = torch.where(flip[:, None, None, None].to(device), x.flip(3), x)
        with torch.no_grad():
            lat = vae.encode(x).latent_dist.sample(g) * vae.config.scaling_factor
        t = torch.randint(0, sched.config.num_train_timesteps, (len(x),), generator=g).to(device)
        eps = torch.randn(lat.shape, generator=g).to(device)
        # the empty prompt for a cond_drop share: guidance (CFG) needs the unconditional model SD learnt this way
        drop = (torch.rand(len(x), generator=g) < p["cond_drop"])[:, None, None].to(device)
        c = torch.where(drop, empty.expand(len(x), -1, -1), ctx.expand(len(x), -1, -1))
        pred = unet(sched.add_noise(lat, eps, t), t, encoder_hidden_states=c).sample
        return {"loss": F.mse_loss(pred, eps)}

    unet.train()
    stats["unet"] = _checkpointed_loop("base_unet", shards, num_samples, {"unet": unet, "vae": vae}, list(unet.parameters()),
                                       ip["base_steps"], unet_step, p, ckpt_dir, chash, log, progress, (0.2, 0.6))
    unet.eval()
    stats["latent_scaling_factor"] = vae.config.scaling_factor
    return stats


def identity_images(shards: list[Path], n: int, min_images: int) -> tuple[dict[int, list[bytes]], int]:
    """(encoded faces of the first n real identities (by label) with at least min_images faces, the number of
    training faces); two passes, so only the chosen identities' bytes are held."""
    count: dict[int, int] = {}
    for s in shards:
        for sample in read_tar(s):
            count[int(sample["cls"])] = count.get(int(sample["cls"]), 0) + 1
    chosen = [lab for lab in sorted(count) if count[lab] >= min_images][:n]
    if not chosen:
        raise ValueError(f"idbooth: no real identity has {min_images}+ training faces (generator.idbooth.min_images)")
    faces: dict[int, list[tuple[str, bytes]]] = {lab: [] for lab in chosen}
    for s in shards:
        for sample in read_tar(s):
            if int(sample["cls"]) in faces:
                faces[int(sample["cls"])].append((sample["__key__"], sample.get("jpg", sample.get("png"))))
    return {lab: [b for _, b in sorted(v)] for lab, v in faces.items()}, sum(count.values())


def _load_if(path: Path, chash: str) -> dict | None:
    """The tensors of a checkpoint file written under this configuration, else None."""
    if not path.is_file():
        return None
    with safe_open(str(path), "pt") as fh:
        ok = (fh.metadata() or {}).get("config_hash") == chash
    return load_file(path) if ok else None


def _save(path: Path, tensors: dict, chash: str) -> None:
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata={"config_hash": chash})


def _tensor(images: list[bytes], res: int) -> torch.Tensor:
    x = torch.stack([torch.from_numpy(decode_image(b).copy()).permute(2, 0, 1) for b in images]).float().div(127.5).sub(1)
    return to_resolution(x, res)


def face_detector(device: str = "cpu", min_score: float = 0.9) -> Callable[[torch.Tensor], torch.Tensor]:
    """[-1, 1] images -> bool per image: the aligner's MTCNN finds a confident face (upsampled to 112 px)."""
    from .align import MTCNNDetector, pick_face
    det = MTCNNDetector(device)

    def found(x: torch.Tensor) -> torch.Tensor:
        arr = ((to_resolution(x.float().cpu(), 112) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        return torch.tensor([pick_face(f, a.shape, min_score) is not None for f, a in zip(det.detect(list(arr)), arr)])
    return found


def train_identity_lora(pipe, images: torch.Tensor, prior: torch.Tensor, init: dict, f, ip: dict, seed: int,
                        device: str, face_found=None) -> tuple[dict, dict]:
    """One identity's LoRA from the shared `init`: lora_steps of idbooth_loss; returns (its state, last losses)."""
    params = dict(pipe.unet.named_parameters())
    with torch.no_grad():
        for k, v in init.items():
            params[k].copy_(v)
    lora = [params[k] for k in init]
    opt = torch.optim.AdamW(lora, lr=ip["lora_lr"], weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    prompts = (encode_prompts(pipe, [INSTANCE_PROMPT]), encode_prompts(pipe, [CLASS_PROMPT]))
    b = ip["lora_batch_size"]
    out = {}
    for _ in range(ip["lora_steps"]):
        i = torch.randint(len(images), (b,), generator=g)
        j = torch.randint(len(prior), (b,), generator=g)
        flip = (torch.rand(b, generator=g) < 0.5)[:, None, None, None]
        x = torch.where(flip, images[i].flip(3), images[i]).to(device)
        out = idbooth_loss(pipe, x, prior[j].to(device), f, g, ip["margin"], ip["id_weight"], face_found, prompts)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(lora, 1.0)
        opt.step()
    return {k: params[k].detach().cpu().clone() for k in init}, {k: round(float(v.detach()), 5) for k, v in out.items()}


def train_idbooth(shards: list[Path], encoder, p: dict, ckpt_dir: Path, device: str = "cpu",
                  log: Callable[[str], None] = print, fingerprint: str = "",
                  progress: Callable[[float], None] | None = None) -> tuple[IDBoothPipeline, dict]:
    """The base model (loaded or pretrained), prior images and one LoRA per identity: an IDBoothPipeline."""
    ip, ckpt_dir = p["idbooth"], Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(p["seed"])
    chash = params_hash({k: v for k, v in p.items() if k not in ("steps", "checkpoint_every")} | {"inputs": fingerprint})
    t0, stats = time.time(), {}
    faces, num_samples = identity_images(shards, ip["num_identities"], ip["min_images"])
    if ip["base_model"]:
        base = _as_pipeline(load_base_model(ip["base_model"]))
    else:
        base = _as_pipeline(tiny_ldm(p["resolution"], ip["base_width"], p["seed"]))
        stats["pretrain"] = pretrain_base(base, shards, num_samples, p, ckpt_dir, chash, device, log, progress)
    pipe = base.to(device)
    res, lo = pipe.resolution, 0.0 if ip["base_model"] else 0.6  # progress: pretraining takes the first 60%
    f = lambda img: F.normalize(encoder(img), dim=1)  # noqa: E731  frozen: no parameter gets a gradient

    # prior-preservation images: the base model's "photo of a person", rendered once and kept with the checkpoints
    prior_file = ckpt_dir / "prior.safetensors"
    prior = (_load_if(prior_file, chash) or {}).get("images")
    if prior is None:
        seeds = [derive_seed(p["seed"], "prior", i) for i in range(ip["prior_images"])]
        prior = torch.cat([pipe([CLASS_PROMPT] * len(s), s, None, ip["prior_steps"], "ddim", ip["prior_guidance"]).cpu()
                           for s in (seeds[i:i + 16] for i in range(0, len(seeds), 16))])
        _save(prior_file, {"images": prior}, chash)
    log(f"idbooth: {len(prior)} prior images of {CLASS_PROMPT!r} at {res} px; {len(faces)} identities to personalise")

    add_lora(pipe.unet, ip["rank"])
    init = {n: p_.detach().clone() for n, p_ in pipe.unet.named_parameters() if "lora" in n}
    found = face_detector(device) if ip["face_check"] else None
    states, history, start = [], [], time.time()
    for n, (label, images) in enumerate(faces.items()):
        done = ckpt_dir / f"lora-{label}.safetensors"
        state = _load_if(done, chash)
        if state is None:  # not trained yet (or under another configuration)
            state, last = train_identity_lora(pipe, _tensor(images, res), prior, init, f, ip,
                                              derive_seed(p["seed"], "lora", label), device, found)
            _save(done, state, chash)
            history.append({"label": label, "images": len(images), **last})
            log(f"idbooth: identity {n + 1}/{len(faces)} (label {label}, {len(images)} faces) loss {last['loss']:.4f} "
                f"cos(a, p) {last['cos_anchor_positive']:.3f}")
        states.append(state)
        if progress is not None:
            progress(lo + (1 - lo) * (n + 1) / len(faces))
    bank = LoraBank.from_states(list(faces), states, ip["rank"])
    out = _as_pipeline(pipe, bank)  # a clean copy of the base UNet: the adapter's weights live in the bank
    stats |= {"identities": len(faces), "lora_steps": ip["lora_steps"], "lora_history": history,
              "lora_parameters_per_identity": int(sum(v.numel() for v in states[0].values())),
              "seconds": round(time.time() - t0, 1),
              "lora_seconds_per_identity": round((time.time() - start) / max(len(history), 1), 2)}
    return out.to("cpu"), stats


def load_base_model(folder: str | Path):
    """A Stable Diffusion (2.1-base layout) diffusers folder, offline; a clear error when it is not one."""
    from diffusers import StableDiffusionPipeline
    folder = Path(folder)
    missing = [c for c in ("model_index.json", "unet", "vae", "text_encoder", "tokenizer", "scheduler") if not (folder / c).exists()]
    if missing:
        raise FileNotFoundError(f"generator.idbooth.base_model: {folder} is not a Stable Diffusion diffusers folder "
                                f"(missing {', '.join(missing)}); unset it to pretrain a small base model here")
    return StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False,
                                                   local_files_only=True)


def _as_pipeline(base, bank: LoraBank | None = None) -> IDBoothPipeline:
    """An IDBoothPipeline of a Stable Diffusion pipeline's modules (an empty bank until the LoRAs are trained);
    a UNet carrying an adapter is copied without it, so the saved base weights load into a plain UNet."""
    c = base.components
    unet = c["unet"]
    if getattr(unet, "peft_config", None):
        clean = UNet2DConditionModel.from_config(unet.config)
        clean.load_state_dict({k.replace(".base_layer", ""): v for k, v in unet.state_dict().items() if "lora" not in k})
        unet = clean
    return IDBoothPipeline(vae=c["vae"], text_encoder=c["text_encoder"], tokenizer=c["tokenizer"], unet=unet,
                           scheduler=c["scheduler"], bank=bank if bank is not None else LoraBank(labels=[], shapes={}))
