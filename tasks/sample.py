"""Sample synthetic identities from a trained generator: plan (anchors, embeddings, conditions, seeds)
and render one block of identities to PNG bytes.

    plan = plan_identities(real_stats, params["sample"], pool, method)  # deterministic; pool: real attributes
    samples = render_block(pipe, encoder, plan, identities=[0, 1, ...], p=params["sample"])

ID3 (METHODS.md 1): m embeddings around each anchor, each with attributes drawn from the real pool,
rendered with the ID-preserving gradient field. CemiFace (2): each identity is one inquiry embedding
(an anchor, or a real training face with [cemiface] inquiry: real) rendered at similarity m, plain
sampling as in the paper. ID-Booth (3): each identity is a real training identity the generator holds a
LoRA for (`real["personalised"]`, their labels), rendered from prompts varying pose wording and background
with CFG, then aligned by the aligner (`aligner`: tasks/align.align_generated). Each gives num_identities x
embeddings_per_identity x images_per_embedding images (ID-Booth: at most as many identities as it personalised).

Each image's noise seed is derive_seed(global seed, identity, embedding, image): any subset of
identities regenerates byte-identically, whatever the block or batch it falls in.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

from models.idbooth import INSTANCE_PROMPT  # the words ID-Booth's LoRAs were trained on
from models.identities import identity_embeddings, plan_prompt_rows, plan_rows, plan_similarity_rows
from .identity import centres as identity_centres
from .anchors import private_random_anchors, real_inquiries, tammes_anchors

METHODS = ("id3", "cemiface", "idbooth")


def plan_identities(real: dict, p: dict, pool: np.ndarray, method: str = "id3") -> dict:
    """Anchors (Tammes or random, below the privacy threshold either way; or CemiFace's real inquiries),
    per-identity embeddings and one row per image; `real` holds the encoder's embeddings and labels of the
    real training faces, `pool` the real attribute pool (N x 3) that ID3 draws from."""
    if method not in METHODS:
        raise ValueError(f"sample: no plan for generator method {method!r} (one of {METHODS})")
    emb, labels = real["embeddings"], real["labels"]
    ids, centres = identity_centres(emb, labels)
    images = p["embeddings_per_identity"] * p["images_per_embedding"]
    if method == "idbooth":  # the real identities the generator personalised, in its bank's order
        personal = np.asarray(real["personalised"], dtype=int)[:p["num_identities"]]
        anchors = centres[np.searchsorted(ids, personal)]
        q = p["idbooth"]
        rows = [{**r, "real_label": int(personal[r["identity"]])}
                for r in plan_prompt_rows(len(personal), images, INSTANCE_PROMPT, q["poses"], q["backgrounds"], p["seed"])]
        return {"anchors": anchors, "embeddings": anchors[:, None, :], "rows": rows,
                "anchor_stats": {"kind": "real identities (ID-Booth)", "identities": int(len(personal)),
                                 "personalised": int(len(real["personalised"]))}}
    if method == "cemiface" and p["cemiface"]["inquiry"] == "real":
        anchors, stats = real_inquiries(p["num_identities"], emb, labels, p["cemiface"]["inquiry_max_cosine"], p["seed"])
    elif p["anchors"] == "tammes":
        anchors, stats = tammes_anchors(p["num_identities"], emb, centres, p["privacy_threshold"], p["anchor_iters"], p["seed"])
    else:  # the ablation: no repulsion, but the privacy margin still holds
        anchors, stats = private_random_anchors(p["num_identities"], emb.shape[1], centres, p["privacy_threshold"], p["seed"])
    if method == "cemiface":  # the anchors (or real inquiries) themselves are the inquiry identities
        return {"anchors": anchors, "embeddings": anchors[:, None, :], "anchor_stats": stats,
                "rows": plan_similarity_rows(p["num_identities"], images, p["cemiface"]["m"], p["seed"])}
    y = identity_embeddings(anchors, p["embeddings_per_identity"], p["v_low"], p["v_high"], p["seed"])
    rows = plan_rows(p["num_identities"], p["embeddings_per_identity"], p["images_per_embedding"], pool, p["seed"])
    return {"anchors": anchors, "embeddings": y, "rows": rows, "anchor_stats": stats}


def to_png(arr: np.ndarray) -> bytes:
    """HxWx3 uint8 (the pipeline's "np" output) -> PNG bytes, fixed settings so bytes are reproducible."""
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def sampling(p: dict, method: str) -> dict:
    """The sampling knobs of a method: ID3 takes [sample]'s; CemiFace samples plainly (the paper) with
    [sample]'s sampler; ID-Booth with [sample.idbooth]'s steps, sampler and CFG scale (no identity guidance)."""
    knobs = {k: p[k] for k in ("num_inference_steps", "sampler", "guidance_scale", "id_weight", "beta", "guidance_schedule")}
    # params.yaml always sets these (the schema requires them); a hand-made dict may leave them to the pipeline's
    # defaults, the field as written (xt, one step)
    knobs.update({k: p[k] for k in ("guidance_gradient", "guidance_substeps") if k in p})
    if method == "cemiface":
        return {**knobs, "guidance_scale": 1.0, "id_weight": 0.0, "beta": 0.0}
    if method == "idbooth":
        q = p["idbooth"]
        return {**knobs, "num_inference_steps": q["num_inference_steps"], "sampler": q["sampler"],
                "guidance_scale": q["guidance_scale"], "id_weight": 0.0, "beta": 0.0}
    return knobs


def render_block(pipe, encoder, plan: dict, identities: list[int], p: dict, device: str = "cpu", aligner=None) -> list[dict]:
    """PNG-encoded samples for the given identities, in plan order; the pipeline's class says the method.
    `aligner` (images -> (aligned images, face found)) post-processes the renders, recorded per row as `aligned`."""
    wanted = set(identities)
    rows = [r for r in plan["rows"] if r["identity"] in wanted]
    pipe.to(device)
    for m in pipe.components.values():
        if hasattr(m, "parameters"):  # the torch modules (not the tokenizer or scheduler)
            m.eval()
    x = pipe.render_rows(plan["embeddings"], plan["anchors"], rows, p["batch_size"], encoder=encoder, output_type="np",
                         **sampling(p, pipe.METHOD))
    if aligner is not None:
        x, found = aligner(list(x))
        rows = [{**r, "aligned": bool(f)} for r, f in zip(rows, found)]
    return [{**r, "png": to_png(img)} for r, img in zip(rows, x)]
