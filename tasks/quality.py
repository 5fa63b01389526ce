"""Dataset-quality metrics of METHODS.md section 7, for any embedding model (the dlib judge or the encoder).

    q = quality(emb, identity, threshold=0.42, radius=0.3, real_centres=rc)   # unit-norm emb
    poses = face_poses(images_uint8, detector)                                # N x 3 (nan: no face found)
    spread = pose_spread(poses, identity)

- identity consistency: mean cosine of each image to its identity centre; the share of images whose
  cosine to the centre of their identity's *other* images reaches the model's same-person threshold
  (calibrated on held-out real pairs by the caller), and the share of same-identity pairs that do;
- separability: mean / max cosine between identity centres; pairwise intra- vs inter-identity cosines;
  unique identities under an r-ball (DCFace's U_class: greedy, an identity whose centre is within cosine
  r of an already kept one is not unique);
- intra-class diversity: pose spread and embedding spread within identities;
- privacy leakage: per synthetic identity, the highest cosine of its centre to any real identity centre,
  counted against the pairwise threshold and against the 95th percentile of real-to-nearest-other-real;
- the real baseline: the real faces downsampled to the synthetic resolution (at_resolution) and measured the
  same way, so the synthetic set's judge pair acceptance and face-detection rate have a like-for-like
  reference (real_baseline: the figures and the product's synthetic / real ratios).
"""
from __future__ import annotations

import numpy as np

from .identity import centres, cos_to_centre


def _groups(identity: np.ndarray) -> list[np.ndarray]:
    """Index arrays of each identity (sorted ids), by one sort: O(N log N), not O(N x identities)."""
    order = np.argsort(identity, kind="stable")
    _, starts = np.unique(identity[order], return_index=True)
    return np.split(order, starts[1:]) if len(order) else []


def loo_cos_to_centre(emb: np.ndarray, identity: np.ndarray) -> np.ndarray:
    """Cosine of each image to the mean of the *other* images of its identity (nan for singletons):
    an image does not vouch for itself, so small identities are not favoured."""
    out = np.full(len(emb), np.nan)
    for ix in _groups(identity):
        if len(ix) < 2:
            continue
        rest = emb[ix].sum(0, keepdims=True) - emb[ix]
        out[ix] = np.einsum("ij,ij->i", emb[ix], rest) / np.maximum(np.linalg.norm(rest, axis=1), 1e-12)
    return out


def unique_identities(c: np.ndarray, radius: float) -> int:
    """Greedy r-ball count over unit centres in their given order (deterministic)."""
    kept, n = np.empty_like(c), 0
    for v in c:
        if n == 0 or float((kept[:n] @ v).max()) < radius:
            kept[n] = v
            n += 1
    return n


BLOCK = 2048


def _cos_rows(a: np.ndarray, b: np.ndarray, same: bool, block: int | None = None):
    """Yield (row offset, a-block @ b.T) with self-pairs at -inf when a is b: 10K x 10K never at once."""
    block = block or BLOCK
    for i in range(0, len(a), block):
        s = a[i:i + block] @ b.T
        if same:
            s[np.arange(len(s)), np.arange(i, i + len(s))] = -np.inf
        yield i, s


def pair_cosines(emb: np.ndarray, identity: np.ndarray, max_pairs: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(intra-identity, inter-identity) pairwise cosines, each subsampled to at most max_pairs."""
    rng = np.random.default_rng(seed)
    identity = np.asarray(identity)
    intra = []
    for ix in _groups(identity):
        e = emb[ix]
        s = e @ e.T
        intra.append(s[np.triu_indices(len(e), 1)])
    intra = np.concatenate(intra) if intra else np.zeros(0)
    if len(intra) > max_pairs:
        intra = rng.choice(intra, max_pairs, replace=False)
    a, b = rng.integers(0, len(emb), (2, 4 * max_pairs)) if len(emb) else (np.zeros(0, int),) * 2
    diff = identity[a] != identity[b]
    a, b = a[diff][:max_pairs], b[diff][:max_pairs]
    return intra, np.einsum("ij,ij->i", emb[a], emb[b])


def nearest_real(synth_c: np.ndarray, real_c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per synthetic centre: (highest cosine to any real centre, index of that real centre), blockwise."""
    best, arg = [], []
    for _, s in _cos_rows(synth_c, real_c, False):
        arg.append(s.argmax(1)); best.append(s.max(1))
    return (np.concatenate(best), np.concatenate(arg)) if best else (np.zeros(0), np.zeros(0, int))


def privacy_leakage(synth_centres: np.ndarray, real_centres: np.ndarray) -> np.ndarray:
    """Per synthetic identity: the highest cosine to any real identity centre."""
    return nearest_real(synth_centres, real_centres)[0]


def real_nearest_other(real_centres: np.ndarray) -> np.ndarray:
    """Per real identity: the highest cosine to any other real identity - how close distinct real people
    come at the centre level, the reference a synthetic identity's leakage is read against."""
    return np.concatenate([s.max(1) for _, s in _cos_rows(real_centres, real_centres, True)] or [np.zeros(0)])


def quality(emb: np.ndarray, identity: np.ndarray, threshold: float, radius: float,
            real_centres: np.ndarray | None = None, max_pairs: int = 20000) -> dict:
    identity = np.asarray(identity)
    if len(emb) == 0:
        return {"images": 0, "identities": 0, "same_person_cos_threshold": float(threshold)}
    _, c = centres(emb, identity)
    cons = cos_to_centre(emb, identity)
    loo = loo_cos_to_centre(emb, identity)
    total, count, top = 0.0, 0, -np.inf
    for _, blk in _cos_rows(c, c, True):
        fin = blk[np.isfinite(blk)]
        total, count, top = total + float(fin.sum()), count + len(fin), max(top, float(fin.max(initial=-np.inf)))
    intra, inter = pair_cosines(emb, identity, max_pairs)
    out = {
        "images": int(len(emb)), "identities": int(len(c)), "same_person_cos_threshold": float(threshold),
        "consistency_mean_cos_to_centre": float(cons.mean()),
        # image vs the centre of its identity's other images: the threshold is calibrated on image pairs
        "consistency_frac_above_threshold": float((loo[~np.isnan(loo)] >= threshold).mean()) if (~np.isnan(loo)).any() else None,
        "intra_pairs_same_person": float((intra >= threshold).mean()) if len(intra) else None,
        "intra_pair_cos_mean": float(intra.mean()) if len(intra) else None,
        "inter_pair_cos_mean": float(inter.mean()) if len(inter) else None,
        "inter_pairs_same_person": float((inter >= threshold).mean()) if len(inter) else None,
        "centre_cos_mean": total / count if count else None,
        "centre_cos_max": top if count else None,
        f"unique_identities_r{radius:g}": unique_identities(c, radius),
        "unique_identities_at_threshold": unique_identities(c, threshold),
        "embedding_spread": float(1.0 - intra.mean()) if len(intra) else None,  # 1 - mean intra-pair cosine
    }
    if real_centres is not None and len(real_centres):
        leak = privacy_leakage(c, real_centres)
        ref = np.percentile(real_nearest_other(real_centres), 95) if len(real_centres) > 1 else np.inf
        out.update({"privacy_max_cos_to_real_mean": float(leak.mean()), "privacy_max_cos_to_real_max": float(leak.max()),
                    "privacy_max_cos_to_real_p95": float(np.percentile(leak, 95)),
                    # centres are tighter than single images, so the pairwise threshold flags distinct people
                    # too; the second count compares with how close distinct real people's centres come
                    "privacy_identities_above_threshold": int((leak >= threshold).sum()),
                    "real_nearest_other_real_p95": float(ref),
                    "privacy_identities_above_real_p95": int((leak >= ref).sum()),
                    "real_identities_compared": int(len(real_centres))})
    return out


def face_poses(images: np.ndarray, detector, size: int = 112, min_score: float = 0.9) -> np.ndarray:
    """Re-detect each (aligned) image and estimate (yaw, pitch, roll) from its 5 landmarks; nan where
    no face is found. The same estimator runs on real and synthetic faces, so their spreads compare."""
    from PIL import Image

    from .align import pick_face
    from .attributes import normalise, pose_pnp
    out = np.full((len(images), 3), np.nan)
    for i in range(0, len(images), 64):
        batch = [im if im.shape[0] == size else np.asarray(Image.fromarray(im).resize((size, size), Image.BICUBIC))
                 for im in images[i:i + 64]]
        for j, faces in enumerate(detector.detect(batch)):
            f = pick_face(faces, batch[j].shape, min_score)
            if f is not None:
                out[i + j] = normalise(pose_pnp(f[2], size, size))
    return out


def pose_spread(poses: np.ndarray, identity: np.ndarray) -> dict:
    """Mean over identities of the within-identity std of yaw / pitch / roll (faces found only)."""
    identity = np.asarray(identity)
    found = ~np.isnan(poses).any(1) if len(poses) else np.zeros(0, bool)
    stds = [poses[ix[found[ix]]].std(0) for ix in _groups(identity) if found[ix].sum() >= 2]
    s = np.mean(stds, 0) if stds else [None] * 3
    return {"faces_found": float(found.mean()) if len(found) else None, "identities_with_2_faces": len(stds),
            **{f"{n}_std_within_identity": (float(v) if v is not None else None) for n, v in zip(("yaw", "pitch", "roll"), s)}}


def at_resolution(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 NHWC faces downsampled to size x size the way the generator's training targets are (bilinear,
    antialiased: tasks/train_generator.to_resolution), so real faces can be measured at the synthetic images'
    resolution; other sizes are returned as they are."""
    import torch
    from torch.nn import functional as F
    if not len(images) or images.shape[1] == size:
        return images
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    y = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return y.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


# what the product asks of a synthetic set against real faces, by the judge at its calibrated threshold
SAME_IDENTITY_RATIO_MIN = 0.8      # synthetic / real same-identity pair acceptance, at least
DIFFERENT_IDENTITY_RATIO_MAX = 2.0  # synthetic / real different-identity pair acceptance, at most


def _ratio(a, b):
    return None if a is None or not b else float(a) / float(b)


def acceptance_ratios(synthetic: dict, real: dict) -> dict:
    """The two product ratios of synthetic over real pair acceptance (entries of real_baseline); None where the
    real figure is 0 or missing (undefined)."""
    same = _ratio(synthetic["same_identity_pairs_accepted"], real["same_identity_pairs_accepted"])
    diff = _ratio(synthetic["different_identity_pairs_accepted"], real["different_identity_pairs_accepted"])
    return {"real_resolution": real["resolution"],
            "same_identity_synthetic_over_real": same, "same_identity_target_min": SAME_IDENTITY_RATIO_MIN,
            "same_identity_meets_target": None if same is None else same >= SAME_IDENTITY_RATIO_MIN,
            "different_identity_synthetic_over_real": diff, "different_identity_target_max": DIFFERENT_IDENTITY_RATIO_MAX,
            "different_identity_meets_target": None if diff is None else diff <= DIFFERENT_IDENTITY_RATIO_MAX}


def real_baseline(synthetic: dict, real_low: dict, real_full: dict) -> dict:
    """The synthetic set's judge pair acceptance and face-detection rate next to the real training faces' at the
    synthetic images' resolution (the like-for-like baseline the ratios use) and at their full resolution.
    Each argument: {"quality": quality() of the judge's embeddings, "resolution": px, "faces_found": rate}."""
    def entry(s):
        q = s["quality"]
        return {"resolution": int(s["resolution"]), "images": q["images"], "identities": q["identities"],
                "same_identity_pairs_accepted": q.get("intra_pairs_same_person"),
                "different_identity_pairs_accepted": q.get("inter_pairs_same_person"), "faces_found": s["faces_found"]}
    syn, low, full = entry(synthetic), entry(real_low), entry(real_full)
    return {"judge_same_person_cos_threshold": synthetic["quality"]["same_person_cos_threshold"],
            "synthetic": syn, "real_at_synthetic_resolution": low, "real_at_full_resolution": full,
            "ratios": {"baseline": "real_at_synthetic_resolution", **acceptance_ratios(syn, low)},
            "ratios_vs_full_resolution": {"baseline": "real_at_full_resolution", **acceptance_ratios(syn, full)}}
