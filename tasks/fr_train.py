"""The fixed FR recipe: IResNet + margin head (CosFace default), SGD with warmup and step decay,
flip / random-resized-crop / random-erasing / colour-jitter augmentation, streamed from WebDataset shards.

Used three times: train_encoder (the generator's identity encoder), train_fr_real (the real-data baseline)
and train_fr (synthetic shards). A validation split of whole identities, carved from the training data,
chooses the checkpoint (verification accuracy on pairs of held-out identities); the benchmarks never do.

    train, val = validation_split(manifest, p["val_fraction"], p["seed"])     # key -> label dicts
    model, stats = train_fr(shard_paths, train, val, params["train_fr"], device="cpu", log=print,
                            checkpoint_dir=Path("ckpt"))   # resumes from ckpt/checkpoint.pt if it is there

A checkpoint written at the end of every epoch holds everything the next epoch depends on (weights, optimizer,
RNG states, history), so a killed run continues to exactly the weights an uninterrupted run ends with.
Run inside torch.distributed (torchrun, see tasks/fr_dist.py) it trains data-parallel: DDP over model + head,
each rank reading its share of the shards (or of the samples, when there are too few shards).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import random
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
import webdataset as wds
from torch import nn
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from models.iresnet import IResNet
from models.margin import MarginHead

from .encoder import build, embed
from .io import atomic_path, remove_stale_temps
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


class _EveryNth:
    """Keep the samples i % world == rank of a stream every rank reads in the same order (picklable)."""

    def __init__(self, rank: int, world: int):
        self.rank, self.world = rank, world

    def __call__(self, src):
        return (s for i, s in enumerate(src) if i % self.world == self.rank)


def loader(shards: list[Path], batch_size: int, seed: int, epoch: int, num_workers: int, labels: _Relabel | None = None,
           split_samples: tuple[int, int] | None = None):
    """One epoch of shuffled (images in [-1, 1], labels, keys) batches: every sample with its own `cls`,
    or only the keys `labels` keeps, relabelled. Under torch.distributed each rank reads its share of the
    shards (split_by_node); split_samples=(rank, world) instead has every rank read every shard and keep
    the samples i % world == rank (for fewer shards than ranks x workers)."""
    rng = random.Random(seed * 1000 + epoch)
    urls = [str(s) for s in shards]
    rng.shuffle(urls)
    ds = wds.WebDataset(urls, shardshuffle=False, nodesplitter=None if split_samples else wds.split_by_node,
                        workersplitter=wds.split_by_worker, empty_check=False)
    if labels is not None:
        ds = ds.select(labels.keep)
    if split_samples:
        ds = ds.compose(_EveryNth(*split_samples))
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


class _Net(nn.Module):
    """Backbone + margin head as one module, so one DDP wrapper averages the gradients of both."""

    def __init__(self, model: nn.Module, head: nn.Module):
        super().__init__()
        self.model, self.head = model, head

    def forward(self, x, y):
        emb = self.model(x)
        return emb, self.head(emb, y)


CHECKPOINT = "checkpoint.pt"
SHARDS_PER_READER = 4  # fewer shards than this per rank x loader worker: split by sample instead


def run_fingerprint(shards: list[Path], train: dict[str, int], val: dict[str, int], p: dict, world: int) -> str:
    """What a checkpoint must match to be resumed: the recipe, the splits, the shard names, the process count."""
    blob = json.dumps({"p": p, "train": train, "val": val, "shards": [Path(s).name for s in shards], "world": world},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _load_checkpoint(folder: Path, fingerprint: str, log: Callable[[str], None]) -> dict | None:
    remove_stale_temps(folder)  # a write the kill interrupted
    f = folder / CHECKPOINT
    if not f.is_file():
        return None
    try:
        ck = torch.load(f, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  (a damaged checkpoint costs the epochs it held, not the run)
        log(f"checkpoint {f} unreadable ({type(e).__name__}: {e}): starting fresh")
        return None
    if ck.get("fingerprint") != fingerprint:
        log(f"checkpoint {f} belongs to a different run (params, data or process count differ): starting fresh")
        return None
    return ck


def keys_digest(keys) -> int:
    """Order-free digest of a multiset of sample keys (sum of 64-bit hashes): the ranks' digests add up to the
    digest of all training keys exactly when every key was read once."""
    return sum(int.from_bytes(hashlib.blake2b(k.encode(), digest_size=8).digest(), "big") for k in keys) % 2**64


def param_digest(module: nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in module.named_parameters():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _gather(obj) -> list:
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _from_rank0(obj):
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _fixed_count(make, steps: int):
    """Exactly `steps` batches, reading the stream again from its start when this rank's share runs out:
    DDP hangs unless every rank takes the same number of steps."""
    n = 0
    while True:
        got = 0
        for batch in make():
            yield batch
            n += 1; got += 1
            if n == steps:
                return
        if not got:
            raise RuntimeError("this rank's share of the training data holds no full batch")


def _cpu(state: dict) -> dict:
    return {k: v.detach().cpu().clone() for k, v in state.items()}


def train_fr(shards: list[Path], train: dict[str, int], val: dict[str, int], p: dict, device: str = "cpu",
             log: Callable[[str], None] = print, progress: Callable[[float], None] | None = None,
             checkpoint_dir: Path | None = None) -> tuple[IResNet, dict]:
    """Train on the `train` keys (key -> contiguous label); return the checkpoint that verifies the `val`
    identities best (the last epoch when there is no validation split). With checkpoint_dir, every epoch
    ends with a checkpoint there, and a run finding one of the same run continues after its epoch.
    Under torch.distributed (world > 1) every rank calls this; p["batch_size"] is the global batch, rank 0
    validates and checkpoints, and every rank returns rank 0's chosen model."""
    num_samples, num_classes = len(train), len(set(train.values()))
    if num_classes < 2:
        raise ValueError(f"FR training needs at least 2 identities, got {num_classes}")
    rank, world = _world()
    bs = p["batch_size"]
    if bs % world:
        raise ValueError(f"batch_size {bs} does not divide over {world} processes")
    say = log if rank == 0 else (lambda s: None)
    if num_samples < bs:  # full batches only: a set smaller than one would train no step at all
        bs = num_samples - num_samples % world
        if bs < world:
            raise ValueError(f"{num_samples} training images cannot make a batch over {world} processes")
        say(f"{num_samples} training images are fewer than train_fr.batch_size {p['batch_size']}: "
            f"training with batches of {bs} (recorded as batch_size_used)")
    if world > 1:
        if device.startswith("cuda"):
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    torch.manual_seed(p["seed"])
    model = build({"kind": "iresnet", "arch": p["arch"]}).to(device)
    head = MarginHead(p["arch"]["embedding_dim"], num_classes, p["margin"]["kind"], s=p["margin"]["s"],
                      **({"m_additive": p["margin"]["m"]} if p["margin"]["kind"] == "cosface" else {"m_angular": p["margin"]["m"]})).to(device)
    net = _Net(model, head)
    params = list(net.parameters())
    opt = torch.optim.SGD(params, lr=p["lr"], momentum=p["momentum"], weight_decay=p["weight_decay"])
    steps_per_epoch = max(1, num_samples // bs)
    total = steps_per_epoch * p["epochs"]

    def lr_at(step: int) -> float:
        epoch = step / steps_per_epoch
        lr = p["lr"] * 0.1 ** sum(epoch >= m for m in p["milestones"])
        return lr * min(1.0, (step + 1) / p["warmup_steps"]) if p["warmup_steps"] else lr

    g = torch.Generator().manual_seed(p["seed"] + rank)  # ranks draw different augmentations; rank 0 = one process
    validate = Validator(shards, val, p["val_max_pairs"], p["seed"]) if val and rank == 0 else None
    if validate is not None and not validate.ready:
        log(f"validation split of {len(val)} images gives too few pairs: the last epoch is kept"); validate = None
    relabel = _Relabel(train)
    step, start, history, best = 0, 0, [], (-1.0, 0, None)
    fingerprint = run_fingerprint(shards, train, val, p, world) if checkpoint_dir is not None else ""
    ck = None
    if checkpoint_dir is not None:
        checkpoint_dir = Path(checkpoint_dir)
        ck = _load_checkpoint(checkpoint_dir, fingerprint, say) if rank == 0 else None
        ck = _from_rank0(ck) if world > 1 else ck  # one decision for all ranks, and no shared disk needed
        if ck is not None:
            model.load_state_dict(ck["model"]); head.load_state_dict(ck["head"]); opt.load_state_dict(ck["optimizer"])
            step, start, history = ck["step"], ck["epoch"], ck["history"]
            best = (ck["best_accuracy"], ck["best_epoch"], ck["best_state"])
            say(f"resumed from epoch {start}")
    ddp = net
    split = None
    if world > 1:
        ddp = DDP(net, device_ids=[torch.device(device).index] if device.startswith("cuda") else None)
        workers = max(1, p["num_workers"])
        # whole shards per rank and worker only when there are enough to balance them: a share of a few
        # shards can hold only held-out identities (shards follow identity order) and give no batch at all
        if len(shards) < SHARDS_PER_READER * world * workers:
            split = (rank, world)
            say(f"{len(shards)} shards for {world} ranks x {workers} loader workers: splitting by sample instead of by shard")
    if ck is not None:  # after everything that might draw from them
        g.set_state(ck["generator"][rank]); torch.set_rng_state(ck["rng"][rank])
        if progress is not None:
            progress(start / p["epochs"])
    step0, t0 = step, time.time()
    model.train()
    for epoch in range(start, p["epochs"]):
        tot_loss = tot_acc = nb = seen = digest = 0

        def batches(epoch=epoch):
            return loader(shards, bs // world, p["seed"], epoch, p["num_workers"], relabel, split)
        for x, y, keys in (batches() if world == 1 else _fixed_count(batches, steps_per_epoch)):
            for group in opt.param_groups:
                group["lr"] = lr_at(step)
            x = augment(x, p["augment"], g).to(device)
            y = y.to(device)
            emb, loss = ddp(x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 5.0)
            opt.step()
            with torch.no_grad():
                acc = (head.logits(emb.detach()).argmax(1) == y).float().mean()
            tot_loss += float(loss.detach()); tot_acc += float(acc); nb += 1; step += 1
            if world > 1:
                seen += len(keys); digest = (digest + keys_digest(keys)) % 2**64
        if not nb:  # never hand back an untrained model as if it were trained
            raise RuntimeError(f"epoch {epoch + 1} read no full batch of {bs} from {num_samples} training images")
        if world > 1:  # the epoch's figures over every rank's batches
            t = torch.tensor([tot_loss, tot_acc, nb], dtype=torch.float64, device=device)
            dist.all_reduce(t)
            tot_loss, tot_acc, nb = t.tolist()
        rate = (step - step0) * bs / (time.time() - t0)
        row = {"epoch": epoch + 1, "loss": tot_loss / max(nb, 1), "train_acc": tot_acc / max(nb, 1)}
        if world > 1:
            ranks = _gather((seen, digest, step))
            row.update(keys_per_rank=[r[0] for r in ranks], keys_digest=f"{sum(r[1] for r in ranks) % 2**64:016x}",
                       steps_per_rank=[r[2] for r in ranks])
        last = epoch + 1 == p["epochs"]
        if validate is not None and ((epoch + 1) % p["val_every"] == 0 or last):
            model.eval()
            row["val_accuracy"] = validate(model)
            model.train()
            if row["val_accuracy"] >= best[0]:  # ties go to the later, lower-lr epoch
                best = (row["val_accuracy"], epoch + 1, _cpu(model.state_dict()))
        history.append(row)
        if checkpoint_dir is not None:
            rngs = _gather((g.get_state(), torch.get_rng_state())) if world > 1 else [(g.get_state(), torch.get_rng_state())]
            if rank == 0:
                ck = {"fingerprint": fingerprint, "epoch": epoch + 1, "step": step, "history": history,
                      "model": _cpu(model.state_dict()), "head": _cpu(head.state_dict()), "optimizer": opt.state_dict(),
                      "generator": [r[0] for r in rngs], "rng": [r[1] for r in rngs],
                      "best_accuracy": best[0], "best_epoch": best[1], "best_state": best[2]}
                with atomic_path(checkpoint_dir / CHECKPOINT) as tmp:
                    torch.save(ck, tmp)
        if world > 1:
            dist.barrier()  # the others wait while rank 0 validates and writes
        say(f"epoch {epoch + 1}/{p['epochs']} loss {row['loss']:.3f} train-acc {row['train_acc']:.3f} "
            + (f"val-acc {row['val_accuracy']:.3f} " if "val_accuracy" in row else "")
            + f"{rate:.0f} img/s, ETA {(total - step) * bs / max(rate, 1e-9):.0f}s")
        if progress is not None:
            progress((epoch + 1) / p["epochs"])
    stats = {"steps": step, "batch_size_used": bs, "history": history, "images_per_s": (step - step0) * bs / max(time.time() - t0, 1e-9),
             "train_images": num_samples, "train_identities": num_classes,
             "val_images": len(val), "val_identities": len(set(val.values())), "val_pairs": len(validate.same) if validate else 0,
             "chosen_epoch": best[1] if best[2] is not None else p["epochs"],
             "chosen_val_accuracy": best[0] if best[2] is not None else None}
    chosen = best[2]
    if world > 1:
        ends = _gather((step, param_digest(net)))
        stats["distributed"] = {"world_size": world, "split": "samples" if split else "shards",
                                "steps_per_rank": [e[0] for e in ends], "param_digest_per_rank": [e[1] for e in ends]}
        # rank 0's chosen weights (its BatchNorm statistics, the ones DDP broadcasts) for every rank
        chosen, stats = _from_rank0((chosen if chosen is not None else _cpu(model.state_dict()), stats) if rank == 0 else None)
    if chosen is not None:
        model.load_state_dict(chosen)
    model.eval()
    return model, stats
