"""Train the generator of generator.method on real aligned faces: ID3 or CemiFace (METHODS.md sections 1,
2; here, resumable, EMA) or ID-Booth (section 3; tasks/train_idbooth.py); diffusers format.

    pipe, stats = train_generator(shards, emb_of, attr_of, n, encoder, params["generator"], ckpt_dir, device, log)
    pipe.save_pretrained("artifacts/generator/pipeline")      # or write_pipeline(pipeline_files(pipe, blobs), folder, blobs)

Identity embeddings y come from the frozen encoder on each training face at the generator's resolution
(what the generator can reproduce). ID3 also conditions on attributes s, the pose (yaw, pitch, roll)
from the align stage; CemiFace on a similarity m drawn from its grid (models/cemiface.py).
A checkpoint (weights, EMA, optimiser, step, RNG) is written atomically every `checkpoint_every` steps
and resumed from only when its configuration hash matches (params, and the caller's fingerprint of
data, encoder and code).
"""
from __future__ import annotations

import hashlib
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from diffusers import DDPMScheduler, UNet2DConditionModel
from diffusers.training_utils import EMAModel
from torch.nn import functional as F

from models.cemiface import CemiConditioner, CemiFacePipeline, cemiface_loss
from models.id3 import ID3Conditioner, ID3Pipeline, id3_loss
from models.identities import ATTRIBUTES, attribute_pool
from models.patch_unet import PatchUNet
from .fr_train import _sample_to_tensor, loader
from .io import Blob, atomic_path, write_bytes  # noqa: F401  (Blob: pipeline_files' references)
from .params import params_hash
from .shards import read_tar


def build_unet(p: dict, context_dim: int, time_scale_shift: str = "default"):
    """"scale_shift" feeds the timestep to each ResNet block as AdaGN (CemiFace); "default" adds it (ID3).
    generator.unet.identity_in_time also pools the context tokens into the timestep embedding, which then reaches
    every ResNet block by AdaGN scale-shift: with one context token, cross-attention's softmax is 1 and the
    identity enters each attention layer only as one added vector, the same at every pixel, while scale-shift
    modulates every feature map (ADM's class conditioning).
    generator.patch_size p > 1 wraps it in models.patch_unet.PatchUNet: the UNet runs at resolution / p."""
    ch = tuple(p["unet"]["block_out_channels"])
    in_time = p["unet"].get("identity_in_time", False)  # hand-made configs without the key: cross-attention only
    n = len(ch)
    # generator.unet.attention: which levels carry transformer blocks (self- and cross-attention); the UNet's
    # middle always does. Hand-made configs without the key: every level but the first
    att = p["unet"].get("attention") or [False] + [True] * (n - 1)
    config = dict(
        sample_size=p["resolution"], in_channels=3, out_channels=3, block_out_channels=ch,
        layers_per_block=p["unet"]["layers_per_block"],
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in att),
        up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(att)),
        cross_attention_dim=context_dim, attention_head_dim=p["unet"]["attention_head_dim"],
        norm_num_groups=p["unet"]["norm_num_groups"],
        resnet_time_scale_shift="scale_shift" if in_time else time_scale_shift,
    )
    if in_time:  # diffusers' attention pooling of encoder_hidden_states into the time embedding (Kandinsky's "text")
        config.update(addition_embed_type="text", addition_embed_type_num_heads=math.gcd(context_dim, 64))
    patch = p.get("patch_size", 1)  # hand-made configs without the key: the plain pixel UNet
    if patch == 1:
        return UNet2DConditionModel(**config)
    return PatchUNet(patch_size=patch, sample_size=p["resolution"], inner=config)


def build_pipeline(p: dict, embedding_dim: int, attribute_dim: int = len(ATTRIBUTES)) -> ID3Pipeline:
    """The untrained generator of p["method"]: ID3Pipeline or CemiFacePipeline (a subclass)."""
    # "squaredcos_cap_v2" (Nichol & Dhariwal's cosine) spends fewer steps on near-pure noise than "linear", which
    # matters most at low resolution; "v_prediction" keeps x0_hat bounded near pure noise (models/id3.to_eps).
    # p without the keys (hand-made configs) keeps DDPM's: linear, epsilon
    sched = DDPMScheduler(num_train_timesteps=p["num_train_timesteps"], beta_schedule=p.get("beta_schedule", "linear"),
                          clip_sample=True, prediction_type=p.get("prediction_type", "epsilon"))
    if p["method"] == "cemiface":
        cond = CemiConditioner(embedding_dim=embedding_dim, sim_dim=embedding_dim, context_dim=p["cemiface"]["context_dim"])
        return CemiFacePipeline(unet=build_unet(p, cond.context_dim, "scale_shift"), conditioner=cond, scheduler=sched)
    if p["method"] != "id3":
        raise ValueError(f"generator.method {p['method']!r}: build_pipeline makes id3 and cemiface generators "
                         "(idbooth's comes from its base model: tasks/train_idbooth.py)")
    cond = ID3Conditioner(embedding_dim=embedding_dim, attribute_dim=attribute_dim, hidden_dims=tuple(p["conditioner_dims"]))
    return ID3Pipeline(unet=build_unet(p, cond.context_dim), conditioner=cond, scheduler=sched)


def training_steps(p: dict) -> int:
    """The generator's optimiser steps: generator.cemiface.steps under CemiFace when set, else generator.steps.
    CemiFace learns identity only from its condition (ID3 also gets it from guided sampling), which a small
    generator picks up slowly: at demo scale its renders ignore their inquiry at 450 steps and follow it by
    ~2000 (README, CemiFace "Training length"; benchmarks/generator_steps.py measures it)."""
    own = p.get("cemiface", {}).get("steps") if p["method"] == "cemiface" else None
    return int(own if own is not None else p["steps"])


def attribute_conditions(pool) -> dict[str, np.ndarray]:
    """key -> ID3's attribute condition (yaw, pitch, roll, age), from the align stage's attribute table (a DataFrame)."""
    return dict(zip(pool["key"], attribute_pool(pool).astype(np.float32)))


def to_resolution(x: torch.Tensor, res: int) -> torch.Tensor:
    if x.shape[-1] == res:
        return x
    return F.interpolate(x, size=(res, res), mode="bilinear", align_corners=False, antialias=True).clamp(-1, 1)


@torch.no_grad()
def real_embeddings(encoder, shards: list[Path], res: int, device: str, batch_size: int = 256) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(keys, labels, L2-normalised embeddings) of every face in the shards, at the generator resolution."""
    keys, labels, embs = [], [], []
    for x, y, k in _ordered(shards, batch_size):
        e = encoder(to_resolution(x, res).to(device))
        embs.append(F.normalize(e.float(), dim=1).cpu())
        keys += list(k)
        labels += [int(v) for v in y]
    return keys, np.asarray(labels), torch.cat(embs).numpy()


def _ordered(shards, batch_size):
    """Batches in shard order (no shuffling), for embedding every face once."""
    batch = []
    for s in shards:
        for sample in read_tar(s):
            batch.append(_sample_to_tensor(sample))
            if len(batch) == batch_size:
                yield torch.stack([b[0] for b in batch]), torch.tensor([b[1] for b in batch]), [b[2] for b in batch]
                batch = []
    if batch:
        yield torch.stack([b[0] for b in batch]), torch.tensor([b[1] for b in batch]), [b[2] for b in batch]


def train_generator(shards: list[Path], emb_of: dict[str, np.ndarray], attr_of: dict[str, np.ndarray], num_samples: int,
              encoder, p: dict, ckpt_dir: Path, device: str = "cpu",
              log: Callable[[str], None] = print, fingerprint: str = "",
              progress: Callable[[float], None] | None = None) -> tuple[ID3Pipeline, dict]:
    """ID3 (p["method"] == "id3"), CemiFace or ID-Booth; `attr_of` (key -> yaw, pitch, roll) is read by ID3
    only, `emb_of` by ID3 and CemiFace (ID-Booth's identities are the real ones, its LoRAs their embedding)."""
    if p["method"] == "idbooth":
        from .train_idbooth import train_idbooth  # imports this module's to_resolution
        return train_idbooth(shards, encoder, p, ckpt_dir, device, log, fingerprint, progress)
    # steps resolved first and left out of the checkpoint hash, so more steps resume instead of restarting
    p = dict(p, steps=training_steps(p)) | ({"cemiface": {k: v for k, v in p["cemiface"].items() if k != "steps"}}
                                            if "cemiface" in p else {})
    torch.manual_seed(p["seed"])
    id3 = p["method"] == "id3"
    emb_dim = len(next(iter(emb_of.values())))
    pipe = build_pipeline(p, emb_dim)
    unet, cond, sched = pipe.unet.to(device), pipe.conditioner.to(device), pipe.scheduler
    params = list(unet.parameters()) + list(cond.parameters())
    opt = torch.optim.AdamW(params, lr=p["lr"], weight_decay=0.0)
    ema = EMAModel(params, decay=p["ema_decay"])
    g = torch.Generator().manual_seed(p["seed"])
    f = lambda img: F.normalize(encoder(img), dim=1)  # noqa: E731  frozen: no parameter gets a gradient
    chash = params_hash({k: v for k, v in p.items() if k not in ("steps", "checkpoint_every")} | {"emb_dim": emb_dim, "n": num_samples, "inputs": fingerprint})
    ckpt = Path(ckpt_dir) / "last.pt"
    step = 0
    if ckpt.is_file():
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        if state["config_hash"] == chash and state["step"] <= p["steps"]:
            unet.load_state_dict(state["unet"]); cond.load_state_dict(state["conditioner"])
            opt.load_state_dict(state["opt"]); ema.load_state_dict(state["ema"])
            g.set_state(state["rng"]); step = state["step"]
            log(f"resumed from {ckpt} at step {step}")
        else:
            log(f"ignoring {ckpt}: it belongs to another configuration")
    t0, start, history, epoch = time.time(), step, [], step * p["batch_size"] // max(num_samples, 1)
    unet.train(); cond.train()
    while step < p["steps"]:
        for x, _, keys in loader(shards, p["batch_size"], p["seed"], epoch, 0):
            if step >= p["steps"]:
                break
            if id3 and not all(k in attr_of for k in keys):  # a pre-aligned face whose pose is unknown: not in the pool
                known = [i for i, k in enumerate(keys) if k in attr_of]
                if not known:
                    continue
                x, keys = x[known], [keys[i] for i in known]
            x0 = to_resolution(x, p["resolution"]).to(device)
            flip = torch.rand(len(keys), generator=g) < 0.5  # flips keep identity, double the data
            x0 = torch.where(flip[:, None, None, None].to(device), x0.flip(3), x0)
            y = torch.from_numpy(np.stack([emb_of[k] for k in keys])).to(device)
            if id3:
                s = torch.from_numpy(np.stack([attr_of[k] for k in keys])).float().to(device)
                s[:, 0] = torch.where(flip.to(device), -s[:, 0], s[:, 0])  # mirrored yaw and roll; age keeps
                s[:, 2] = torch.where(flip.to(device), -s[:, 2], s[:, 2])
                out = id3_loss(unet, cond, f, sched, x0, y, s, g, p["cond_drop"], p["lambda_scale"], p["kappa_scale"], p["id_schedule"],
                               p.get("snr_gamma"))
            else:  # CemiFace trains without condition dropout (the paper samples without guidance)
                out = cemiface_loss(unet, cond, f, sched, x0, y, g, p["cemiface"]["sim_weight"], p["cemiface"]["sim_grid_step"],
                                    snr_gamma=p.get("snr_gamma"))
            for group in opt.param_groups:  # linear warm-up, a function of the step alone: resumes exactly
                group["lr"] = p["lr"] * min(1.0, (step + 1) / max(p.get("warmup_steps", 0), 1))
            opt.zero_grad(set_to_none=True)
            out["loss"].backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            ema.step(params)
            step += 1
            if step % 25 == 0 or step == p["steps"]:
                rate = (step - start) * p["batch_size"] / (time.time() - t0)
                row = {k: round(float(v.detach()), 5) for k, v in out.items()} | {"step": step}
                history.append(row)
                log(f"step {step}/{p['steps']} loss {row['loss']:.4f} mse {row['mse']:.4f} id {row['id']:.3f} "
                    f"{rate:.1f} img/s, ETA {(p['steps'] - step) * p['batch_size'] / max(rate, 1e-9):.0f}s")
                if progress is not None:
                    progress(step / p["steps"])
            if step % p["checkpoint_every"] == 0 or step == p["steps"]:
                ckpt.parent.mkdir(parents=True, exist_ok=True)
                with atomic_path(ckpt) as tmp:
                    torch.save({"config_hash": chash, "step": step, "unet": unet.state_dict(), "conditioner": cond.state_dict(),
                                "opt": opt.state_dict(), "ema": ema.state_dict(), "rng": g.get_state()}, tmp)
        epoch += 1
    ema.copy_to(params)  # sampling uses the EMA weights
    unet.eval(); cond.eval()
    pipe.to("cpu")
    return pipe, {"steps": step, "resumed_from": start, "history": history,
                  "images_per_s": (step - start) * p["batch_size"] / max(time.time() - t0, 1e-9)}


def pipeline_files(pipe, blobs: Path | None = None, max_inline: int = 64 << 20) -> dict[str, bytes | Blob]:
    """The pipeline's diffusers folder as {relative path: bytes}: configs and weights of any method's generator,
    e.g. as a cached task result the flow writes out unchanged (write_pipeline). With `blobs`, a file over
    `max_inline` bytes is moved there once and stands as a Blob: an ID-Booth pipeline on Stable Diffusion carries
    GBs of frozen base weights, which a result (pickled in memory, stored per run) should not copy."""
    out = {}
    if blobs is not None:
        Path(blobs).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=blobs) as d:  # beside the blobs: moving a file there is a rename
        pipe.save_pretrained(d)
        for f in sorted(Path(d).rglob("*")):
            if not f.is_file():
                continue
            rel, size = f.relative_to(d).as_posix(), f.stat().st_size
            if blobs is None or size <= max_inline:
                out[rel] = f.read_bytes()
                continue
            h = hashlib.sha256()
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 24), b""):
                    h.update(chunk)
            out[rel] = Blob(h.hexdigest(), size)
            if not (blobs / out[rel].sha256).is_file():
                os.replace(f, blobs / out[rel].sha256)  # atomic: a blob is complete or absent
    return out


def missing_blobs(files: dict, blobs: Path | None) -> list[str]:
    """The files of pipeline_files' result whose blob is gone (e.g. the Prefect home was pruned)."""
    return [rel for rel, v in files.items() if isinstance(v, Blob)
            and (blobs is None or not (blobs / v.sha256).is_file() or (blobs / v.sha256).stat().st_size != v.size)]


def write_pipeline(files: dict, folder: Path, blobs: Path | None = None) -> None:
    """Write pipeline_files' result as a diffusers folder, each file atomically; blobs are copied out of the store."""
    for rel, v in files.items():
        if isinstance(v, Blob):
            with atomic_path(Path(folder) / rel) as tmp:
                shutil.copyfile(blobs / v.sha256, tmp)
        else:
            write_bytes(Path(folder) / rel, v)
