"""Sample synthetic identities from a trained generator: plan (anchors, embeddings, attributes, seeds)
and render one block of identities to PNG bytes.

    plan = plan_identities(real_stats, params["sample"], pool)  # deterministic from the seed; pool: real attributes
    samples = render_block(pipe, encoder, plan, identities=[0, 1, ...], p=params["sample"])

Each image's noise seed is derive_seed(global seed, identity, embedding, image): any subset of
identities regenerates byte-identically, whatever the block or batch it falls in.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

from models.identities import identity_embeddings, plan_rows
from .identity import centres as identity_centres
from .anchors import private_random_anchors, tammes_anchors


def plan_identities(real: dict, p: dict, pool: np.ndarray) -> dict:
    """Anchors (Tammes or random, below the privacy threshold either way), per-identity embeddings and one
    row per image; `real` holds the encoder's embeddings and labels of the real training faces, `pool` the
    real attribute pool (N x 3) that sampling draws from."""
    emb, labels = real["embeddings"], real["labels"]
    _, centres = identity_centres(emb, labels)
    if p["anchors"] == "tammes":
        anchors, stats = tammes_anchors(p["num_identities"], emb, centres, p["privacy_threshold"], p["anchor_iters"], p["seed"])
    else:  # the ablation: no repulsion, but the privacy margin still holds
        anchors, stats = private_random_anchors(p["num_identities"], emb.shape[1], centres, p["privacy_threshold"], p["seed"])
    y = identity_embeddings(anchors, p["embeddings_per_identity"], p["v_low"], p["v_high"], p["seed"])
    rows = plan_rows(p["num_identities"], p["embeddings_per_identity"], p["images_per_embedding"], pool, p["seed"])
    return {"anchors": anchors, "embeddings": y, "rows": rows, "anchor_stats": stats}


def to_png(arr: np.ndarray) -> bytes:
    """HxWx3 uint8 (the pipeline's "np" output) -> PNG bytes, fixed settings so bytes are reproducible."""
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def render_block(pipe, encoder, plan: dict, identities: list[int], p: dict, device: str = "cpu") -> list[dict]:
    """PNG-encoded samples for the given identities, in plan order."""
    wanted = set(identities)
    rows = [r for r in plan["rows"] if r["identity"] in wanted]
    pipe.to(device)
    pipe.unet.eval(); pipe.conditioner.eval()
    x = pipe.render_rows(plan["embeddings"], plan["anchors"], rows, p["batch_size"], num_inference_steps=p["num_inference_steps"],
                         sampler=p["sampler"], guidance_scale=p["guidance_scale"], id_weight=p["id_weight"], beta=p["beta"],
                         encoder=encoder, guidance_schedule=p["guidance_schedule"], output_type="np")
    return [{**r, "png": to_png(img)} for r, img in zip(rows, x)]
