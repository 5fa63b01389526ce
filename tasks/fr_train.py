"""The fixed FR recipe: IResNet + margin head (CosFace default), SGD with warmup and step decay,
flip / random-resized-crop / random-erasing / colour-jitter augmentation, streamed from WebDataset shards.

Used twice: train_encoder (real aligned faces) and train_fr (synthetic shards).

    model, stats = train_fr(shard_paths, num_samples, num_classes, params["train_fr"], device="cpu", log=print)
"""
from __future__ import annotations

import io
import math
import random
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torch.nn import functional as F

from models.iresnet import IResNet
from models.margin import MarginHead

from .encoder import build


def decode_image(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _sample_to_tensor(sample: dict) -> tuple[torch.Tensor, int, str]:
    img = sample.get("jpg", sample.get("png"))
    x = torch.from_numpy(decode_image(img).copy()).permute(2, 0, 1).float().div(127.5).sub(1)
    return x, int(sample["cls"]), sample["__key__"]


def loader(shards: list[Path], batch_size: int, seed: int, epoch: int, num_workers: int):
    """One epoch of shuffled (images in [-1, 1], labels, keys) batches, decoded in loader workers."""
    rng = random.Random(seed * 1000 + epoch)
    urls = [str(s) for s in shards]
    rng.shuffle(urls)
    ds = (wds.WebDataset(urls, shardshuffle=False, nodesplitter=wds.split_by_node, workersplitter=wds.split_by_worker,
                         empty_check=False)
          .shuffle(2000, rng=random.Random(seed * 1000 + epoch + 1))
          .map(_sample_to_tensor)
          .batched(batch_size, partial=False))
    return wds.WebLoader(ds, batch_size=None, num_workers=min(num_workers, len(urls)))


def augment(x: torch.Tensor, a: dict, g: torch.Generator) -> torch.Tensor:
    """Batch augmentation on [-1, 1] tensors, per-sample random draws from generator g."""
    n, _, h, w = x.shape
    if a["flip"]:
        flip = torch.rand(n, generator=g) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    if a["crop_scale"] < 1.0:  # random resized crop with area scale in [crop_scale, 1]
        s = torch.empty(n).uniform_(a["crop_scale"], 1.0, generator=g).sqrt()
        tx = (torch.rand(n, generator=g) * 2 - 1) * (1 - s)
        ty = (torch.rand(n, generator=g) * 2 - 1) * (1 - s)
        theta = torch.zeros(n, 2, 3)
        theta[:, 0, 0], theta[:, 1, 1], theta[:, 0, 2], theta[:, 1, 2] = s, s, tx, ty
        x = F.grid_sample(x, F.affine_grid(theta, x.shape, align_corners=False), align_corners=False, padding_mode="border")
    if a["jitter"] > 0:  # brightness / contrast
        b = (torch.rand(n, 1, 1, 1, generator=g) * 2 - 1) * a["jitter"] * 2
        c = 1 + (torch.rand(n, 1, 1, 1, generator=g) * 2 - 1) * a["jitter"]
        m = x.mean(dim=(1, 2, 3), keepdim=True)
        x = ((x - m) * c + m + b).clamp(-1, 1)
    if a["erase_p"] > 0:  # random erasing of 2-10% of the area
        for i in torch.nonzero(torch.rand(n, generator=g) < a["erase_p"]).flatten().tolist():
            area = float(torch.empty(1).uniform_(0.02, 0.1, generator=g)) * h * w
            eh = min(h, max(1, int(math.sqrt(area)))); ew = min(w, max(1, int(area / eh)))
            y0 = int(torch.randint(0, h - eh + 1, (1,), generator=g)); x0 = int(torch.randint(0, w - ew + 1, (1,), generator=g))
            x[i, :, y0:y0 + eh, x0:x0 + ew] = 0
    return x


def train_fr(shards: list[Path], num_samples: int, num_classes: int, p: dict, device: str = "cpu",
             log: Callable[[str], None] = print) -> tuple[IResNet, dict]:
    if num_classes < 2:
        raise ValueError(f"FR training needs at least 2 identities, got {num_classes}")
    torch.manual_seed(p["seed"])
    model = build({"kind": "iresnet", "arch": p["arch"]}).to(device)
    head = MarginHead(p["arch"]["embedding_dim"], num_classes, p["margin"]["kind"], s=p["margin"]["s"],
                      **({"m_additive": p["margin"]["m"]} if p["margin"]["kind"] == "cosface" else {"m_angular": p["margin"]["m"]})).to(device)
    params = list(model.parameters()) + list(head.parameters())
    opt = torch.optim.SGD(params, lr=p["lr"], momentum=p["momentum"], weight_decay=p["weight_decay"])
    steps_per_epoch = max(1, num_samples // p["batch_size"])
    total = steps_per_epoch * p["epochs"]

    def lr_at(step: int) -> float:
        epoch = step / steps_per_epoch
        lr = p["lr"] * 0.1 ** sum(epoch >= m for m in p["milestones"])
        return lr * min(1.0, (step + 1) / p["warmup_steps"]) if p["warmup_steps"] else lr

    g = torch.Generator().manual_seed(p["seed"])
    step, t0, history = 0, time.time(), []
    model.train()
    for epoch in range(p["epochs"]):
        tot_loss = tot_acc = nb = 0
        for x, y, _ in loader(shards, p["batch_size"], p["seed"], epoch, p["num_workers"]):
            for group in opt.param_groups:
                group["lr"] = lr_at(step)
            x = augment(x, p["augment"], g).to(device)
            y = y.to(device)
            emb = model(x)
            loss = head(emb, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 5.0)
            opt.step()
            with torch.no_grad():
                acc = (head.logits(emb.detach()).argmax(1) == y).float().mean()
            tot_loss += float(loss.detach()); tot_acc += float(acc); nb += 1; step += 1
        rate = step * p["batch_size"] / (time.time() - t0)
        history.append({"epoch": epoch + 1, "loss": tot_loss / max(nb, 1), "train_acc": tot_acc / max(nb, 1)})
        log(f"epoch {epoch + 1}/{p['epochs']} loss {tot_loss / max(nb, 1):.3f} train-acc {tot_acc / max(nb, 1):.3f} "
            f"{rate:.0f} img/s, ETA {(total - step) * p['batch_size'] / max(rate, 1e-9):.0f}s")
    model.eval()
    return model, {"steps": step, "history": history, "images_per_s": step * p["batch_size"] / (time.time() - t0)}
