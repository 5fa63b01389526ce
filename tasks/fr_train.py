"""The fixed FR recipe: IResNet + margin head (CosFace default), SGD with warmup and step decay,
flip / random-resized-crop / random-erasing / colour-jitter augmentation, streamed from WebDataset shards.

Used three times: train_encoder (the generator's identity encoder), train_fr_real (the real-data baseline)
and train_fr (synthetic shards). A validation split of whole identities, carved from the training data,
chooses the checkpoint (verification accuracy on pairs of held-out identities); the benchmarks never do.

    train, val = validation_split(manifest, p["val_fraction"], p["seed"])     # key -> label dicts
    model, stats = train_fr(shard_paths, train, val, params["train_fr"], device="cpu", log=print)
"""
from __future__ import annotations

import math
import random
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import webdataset as wds
from torch.nn import functional as F

from models.iresnet import IResNet
from models.margin import MarginHead

from .encoder import build, embed
from .shards import decode_image, iter_images
from .verification import verify


def _sample_to_tensor(sample: dict) -> tuple[torch.Tensor, int, str]:
    img = sample.get("jpg", sample.get("png"))
    x = torch.from_numpy(decode_image(img).copy()).permute(2, 0, 1).float().div(127.5).sub(1)
    return x, int(sample["cls"]), sample["__key__"]


class _Relabel:
    """Keep the training split's samples and give them its contiguous labels (picklable for loader workers)."""

    def __init__(self, labels: dict[str, int]):
        self.labels = labels

    def keep(self, sample: dict) -> bool:
        return sample["__key__"] in self.labels

    def __call__(self, sample: dict):
        x, _, key = _sample_to_tensor(sample)
        return x, self.labels[key], key


def validation_split(manifest, fraction: float, seed: int) -> tuple[dict[str, int], dict[str, int]]:
    """Hold out whole identities, as the benchmarks hold out people: (train key -> contiguous label,
    validation key -> original label). manifest: rows with `key` and `label`. At least 2 identities are
    held out when fraction > 0, and none when fewer than 4 identities exist (then nothing chooses)."""
    keys, labels = manifest["key"].astype(str).tolist(), manifest["label"].astype(int).tolist()
    ids = sorted(set(labels))
    n_val = max(2, round(fraction * len(ids))) if fraction > 0 and len(ids) >= 4 else 0
    val_ids = set(np.random.default_rng(seed).permutation(ids)[:n_val].tolist())
    new = {i: n for n, i in enumerate(i for i in ids if i not in val_ids)}
    train = {k: new[c] for k, c in zip(keys, labels) if c not in val_ids}
    val = {k: c for k, c in zip(keys, labels) if c in val_ids}
    return train, val


def validation_pairs(labels: np.ndarray, max_pairs: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Matched and mismatched index pairs, equal numbers, interleaved so contiguous folds hold both."""
    rng = np.random.default_rng(seed)
    pos = [(i, j) for c in np.unique(labels) for ix in [np.flatnonzero(labels == c)]
           for a, i in enumerate(ix) for j in ix[a + 1:]]
    n = min(len(pos), max_pairs // 2)
    pos = [pos[k] for k in rng.permutation(len(pos))[:n]]
    neg = []
    while len(neg) < n:
        i, j = rng.integers(0, len(labels), 2)
        if labels[i] != labels[j]:
            neg.append((i, j))
    both = [p for pair in zip(pos, neg) for p in pair]
    a, b = (np.array([p[k] for p in both], dtype=int) for k in (0, 1))
    return a, b, labels[a] == labels[b]


class Validator:
    """Verification accuracy on pairs of held-out identities (insightface protocol, up to 10 folds)."""

    def __init__(self, shards: list[Path], val: dict[str, int], max_pairs: int, seed: int):
        batches = list(iter_images(shards, val))  # the validation split is small
        self.images = np.concatenate([b[1] for b in batches]) if batches else np.zeros((0, 1, 1, 3), np.uint8)
        keys = [k for b in batches for k in b[0]]
        labels = np.array([val[k] for k in keys])
        self.a, self.b, self.same = validation_pairs(labels, max_pairs, seed) if len(keys) else ([], [], [])
        self.ready = len(self.same) >= 4

    def __call__(self, model) -> float:
        e = embed(model, self.images)
        return verify(e[self.a], e[self.b], self.same, folds=min(10, len(self.same)), fars=())["accuracy"]


def loader(shards: list[Path], batch_size: int, seed: int, epoch: int, num_workers: int, labels: _Relabel | None = None):
    """One epoch of shuffled (images in [-1, 1], labels, keys) batches: every sample with its own `cls`,
    or only the keys `labels` keeps, relabelled."""
    rng = random.Random(seed * 1000 + epoch)
    urls = [str(s) for s in shards]
    rng.shuffle(urls)
    ds = wds.WebDataset(urls, shardshuffle=False, nodesplitter=wds.split_by_node, workersplitter=wds.split_by_worker,
                        empty_check=False)
    if labels is not None:
        ds = ds.select(labels.keep)
    ds = (ds.shuffle(2000, rng=random.Random(seed * 1000 + epoch + 1))
          .map(labels if labels is not None else _sample_to_tensor)
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


def train_fr(shards: list[Path], train: dict[str, int], val: dict[str, int], p: dict, device: str = "cpu",
             log: Callable[[str], None] = print, progress: Callable[[float], None] | None = None) -> tuple[IResNet, dict]:
    """Train on the `train` keys (key -> contiguous label); return the checkpoint that verifies the `val`
    identities best (the last epoch when there is no validation split)."""
    num_samples, num_classes = len(train), len(set(train.values()))
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
    validate = Validator(shards, val, p["val_max_pairs"], p["seed"]) if val else None
    if validate is not None and not validate.ready:
        log(f"validation split of {len(val)} images gives too few pairs: the last epoch is kept"); validate = None
    relabel = _Relabel(train)
    step, t0, history, best = 0, time.time(), [], (-1.0, 0, None)
    model.train()
    for epoch in range(p["epochs"]):
        tot_loss = tot_acc = nb = 0
        for x, y, _ in loader(shards, p["batch_size"], p["seed"], epoch, p["num_workers"], relabel):
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
        row = {"epoch": epoch + 1, "loss": tot_loss / max(nb, 1), "train_acc": tot_acc / max(nb, 1)}
        last = epoch + 1 == p["epochs"]
        if validate is not None and ((epoch + 1) % p["val_every"] == 0 or last):
            model.eval()
            row["val_accuracy"] = validate(model)
            model.train()
            if row["val_accuracy"] >= best[0]:  # ties go to the later, lower-lr epoch
                best = (row["val_accuracy"], epoch + 1, {k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
        history.append(row)
        log(f"epoch {epoch + 1}/{p['epochs']} loss {row['loss']:.3f} train-acc {row['train_acc']:.3f} "
            + (f"val-acc {row['val_accuracy']:.3f} " if "val_accuracy" in row else "")
            + f"{rate:.0f} img/s, ETA {(total - step) * p['batch_size'] / max(rate, 1e-9):.0f}s")
        if progress is not None:
            progress((epoch + 1) / p["epochs"])
    if best[2] is not None:
        model.load_state_dict(best[2])
    model.eval()
    return model, {"steps": step, "history": history, "images_per_s": step * p["batch_size"] / (time.time() - t0),
                   "train_images": num_samples, "train_identities": num_classes,
                   "val_images": len(val), "val_identities": len(set(val.values())), "val_pairs": len(validate.same) if validate else 0,
                   "chosen_epoch": best[1] if best[2] is not None else p["epochs"],
                   "chosen_val_accuracy": best[0] if best[2] is not None else None}
