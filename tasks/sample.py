"""Sample synthetic identities from a trained generator: plan (anchors, embeddings, attributes, seeds)
and render one block of identities to PNG bytes.

    plan = plan_identities(real_stats, params["sample"])        # deterministic from the seed
    samples = render_block(pipe, encoder, plan, identities=[0, 1, ...], p=params["sample"])

Each image's noise seed is derive_seed(global seed, identity, embedding, image): any subset of
identities regenerates byte-identically, whatever the block or batch it falls in.
"""
from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

from models.id3 import make_scheduler, id3_sample
from .identity import centres as identity_centres
from .anchors import derive_seed, identity_embeddings, random_anchors, tammes_anchors


def plan_identities(real: dict, p: dict) -> dict:
    emb, labels, attrs = real["embeddings"], real["labels"], real["attributes"]
    _, centres = identity_centres(emb, labels)
    if p["anchors"] == "tammes":
        anchors, stats = tammes_anchors(p["num_identities"], emb, centres, p["privacy_threshold"], p["anchor_iters"], p["seed"])
    else:
        anchors = random_anchors(p["num_identities"], emb.shape[1], p["seed"])
        stats = {"max_cos_to_real_identity": float((anchors @ centres.T).max())}
    y = identity_embeddings(anchors, p["embeddings_per_identity"], p["v_low"], p["v_high"], p["seed"])
    n, m, k = p["num_identities"], p["embeddings_per_identity"], p["images_per_embedding"]
    rows = []
    for i in range(n):
        for j in range(m):
            a = attrs[np.random.default_rng(derive_seed(p["seed"], "attribute", i, j)).integers(len(attrs))]
            for r in range(k):
                rows.append({"key": f"id{i:06d}_{j:03d}_{r:03d}", "identity": i, "embedding": j, "image": r,
                             "seed": derive_seed(p["seed"], "image", i, j, r),
                             "yaw": float(a[0]), "pitch": float(a[1]), "roll": float(a[2])})
    return {"anchors": anchors, "embeddings": y, "rows": rows, "anchor_stats": stats}


def to_png(x: torch.Tensor) -> bytes:
    arr = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def render_block(pipe, encoder, plan: dict, identities: list[int], p: dict, device: str = "cpu") -> list[dict]:
    """PNG-encoded samples for the given identities, in plan order."""
    wanted = set(identities)
    rows = [r for r in plan["rows"] if r["identity"] in wanted]
    emb = torch.as_tensor(plan["embeddings"], dtype=torch.float32)
    others = F.normalize(torch.as_tensor(plan["anchors"], dtype=torch.float32), dim=1)  # one per identity
    f = (lambda img: F.normalize(encoder(img), dim=1)) if encoder is not None else None
    sched = make_scheduler(p["sampler"], pipe.scheduler.config)
    unet, cond = pipe.unet.to(device).eval(), pipe.conditioner.to(device).eval()
    out = []
    for b in range(0, len(rows), p["batch_size"]):
        part = rows[b:b + p["batch_size"]]
        n_real = len(part)
        # every batch has exactly batch_size rows (the last padded with repeats): CPU kernels pick their
        # reduction order by batch shape, so a fixed shape keeps an image's bytes independent of the subset
        part = part + [part[-1]] * (p["batch_size"] - n_real)
        y = F.normalize(torch.stack([emb[r["identity"], r["embedding"]] for r in part]), dim=1)
        s = torch.tensor([[r["yaw"], r["pitch"], r["roll"]] for r in part], dtype=torch.float32)
        own = torch.zeros(len(part), len(others), dtype=torch.bool)
        own[torch.arange(len(part)), torch.tensor([r["identity"] for r in part])] = True
        x = id3_sample(unet, cond, sched, y, s, [r["seed"] for r in part], p["num_inference_steps"],
                       p["guidance_scale"], p["id_weight"], p["beta"], f, others, own)
        out += [{**r, "png": to_png(img.cpu())} for r, img in zip(part[:n_real], x)]
    return out
