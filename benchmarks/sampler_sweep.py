"""Sampling cost vs quality: identity consistency and diversity against denoiser evaluations per image.

    python benchmarks/sampler_sweep.py --artifacts /work/main/artifacts          # demo generator, ~7 min on 2 cores
    python benchmarks/sampler_sweep.py --identities 4 --ddpm-images 1 ...        # smaller
    python benchmarks/sampler_sweep.py ... --variant "x0grad:guidance_gradient=x0,id_weight=300"   # + another guidance
    python benchmarks/sampler_sweep.py --device cuda --dtype bf16 --artifacts <paper artifacts> --params params-paper.yaml

Renders the same plan (plan_identities: anchors, embeddings, attributes, seeds) through the real sample code
(tasks/sample.render_block) with 1000-step DDPM, DDIM 50, 20 and 10, DPM-Solver++ 20 and 10, under the sample
stage's ID-preserving guidance as the params file sets it (sample.id_weight, beta, guidance_schedule,
guidance_scale). A guided step costs about three UNet calls' worth (forward, then backward through UNet and
encoder), so 1000-step DDPM costs about a minute per image on 2 CPU cores: it renders only the plan's first
--ddpm-images images, and every sampler is also scored on those images ("subset"), so the comparison with
DDPM is like for like (and small: read its figures as indicative).

Quality is measured with the independent dlib judge as package/evaluate measure it (descriptors centred on
the real training faces' mean, tasks/judge.centred_unit): consistency = per-identity mean cosine to the
identity centre (tasks/identity.cos_to_centre), also leave-one-out (tasks/quality.loo_cos_to_centre);
diversity = 1 - mean intra-identity pairwise judge cosine (tasks/quality.pair_cosines) and the mean
pixel-space RMS distance between images of one identity. NFE (UNet rows per image) and encoder calls are
counted with forward hooks, not derived. Writes benchmarks/results/sampler_sweep.json with whether some
sampler with 10-20 NFE stays within 1% of DDIM-50's judge consistency, and which one the figures favour.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import ROOT, Bench, RowCounter, common_args, wait_until_idle  # noqa: E402
from models.identities import attribute_pool  # noqa: E402
from tasks.identity import cos_to_centre  # noqa: E402
from tasks.judge import DlibJudge, centred_unit  # noqa: E402
from tasks.params import load_params  # noqa: E402
from tasks.quality import loo_cos_to_centre, pair_cosines  # noqa: E402
from tasks.sample import plan_identities, render_block, sampling  # noqa: E402
from tasks.shards import decode_image, iter_images  # noqa: E402

SAMPLERS = [("ddpm", 1000), ("ddim", 50), ("ddim", 20), ("ddim", 10), ("dpmsolver++", 20), ("dpmsolver++", 10)]
VARIANT_SAMPLERS = [("ddim", 20), ("ddim", 10)]
REFERENCE = "ddim-50"
TARGET_NFE = (10, 20)
TARGET_REL = 0.01  # within 1% of the reference's consistency
MAX_EXTRA_SATURATION = 0.01  # a candidate's pixels at 0 or 255, at most this share above the reference's


def load_generation(art: Path, device: str):
    """(pipeline, encoder, real embedding stats, attribute pool) from a project's artifacts folder."""
    from models.id3 import ID3Pipeline
    from tasks.encoder import load_encoder
    pipe = ID3Pipeline.from_pretrained(art / "generator" / "pipeline")
    enc = load_encoder(art / "encoder", device)
    real = dict(np.load(art / "generator" / "real_stats.npz"))
    pool = attribute_pool(pd.read_parquet(art / "align" / "attributes.parquet"))
    return pipe, enc, real, pool


def judge_reference_mean(judge: DlibJudge, art: Path, faces: int) -> np.ndarray:
    """The mean raw dlib descriptor of the first `faces` real training faces (package centres on it)."""
    shards = sorted((art / "align").glob("faces-train-*.tar"))
    got = []
    for _, images, _ in iter_images(shards, batch_size=min(faces, 256)):
        got.append(judge.describe_all(images[:faces - sum(len(g) for g in got)]))
        if sum(len(g) for g in got) >= faces:
            break
    return np.concatenate(got).mean(0)


def decode_pngs(samples: list[dict]) -> np.ndarray:
    return np.stack([decode_image(s["png"]) for s in samples])


def quality(emb: np.ndarray, identity: np.ndarray, pixels: np.ndarray) -> dict:
    """Judge consistency (mean over identities of the mean cosine to the centre), leave-one-out consistency,
    judge and pixel diversity within identities, and per-identity consistency (for paired comparisons)."""
    cons = cos_to_centre(emb, identity)
    ids = np.unique(identity)
    per_id = np.array([cons[identity == i].mean() for i in ids])
    intra, _ = pair_cosines(emb, identity, max_pairs=10**6)
    px = pixels.reshape(len(pixels), -1).astype(np.float64) / 255.0
    rms = [np.sqrt(((px[a] - px[b]) ** 2).mean()) for i in ids for ix in [np.flatnonzero(identity == i)]
           for n, a in enumerate(ix) for b in ix[n + 1:]]
    loo = loo_cos_to_centre(emb, identity)
    pairs = len(intra) > 0  # an identity of one image has no pairs: no diversity, no leave-one-out
    # pixels at 0 or 255: a sampler that leaves the data range (x0 not clipped) shows here, whatever the judge says
    saturated = float(((pixels == 0) | (pixels == 255)).mean())
    return {"images": int(len(emb)), "identities": int(len(ids)), "consistency": float(per_id.mean()),
            "saturated_pixel_share": saturated,
            "consistency_loo": float(np.nanmean(loo)) if pairs else None,
            "diversity_judge": float(1 - intra.mean()) if pairs else None,
            "diversity_pixel_rms": float(np.mean(rms)) if pairs else None,
            "per_identity_consistency": per_id.round(6).tolist()}


def paired(a: dict, b: dict) -> dict:
    """a - b over the same identities: mean difference of per-identity consistency and its standard error."""
    d = np.array(a["per_identity_consistency"]) - np.array(b["per_identity_consistency"])
    se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else None
    return {"mean_diff": float(d.mean()), "se": se, "relative": float(d.mean() / b["consistency"])}


def verdict(runs: dict[str, dict], scope: str = "all") -> dict:
    """Does a sampler with 10-20 NFE keep consistency >= 99% of DDIM-50's? And which one to use."""
    ref = runs[REFERENCE][scope]["consistency"]
    sat = runs[REFERENCE][scope]["saturated_pixel_share"] + MAX_EXTRA_SATURATION
    few = {k: r for k, r in runs.items() if scope in r and TARGET_NFE[0] <= r["nfe_per_image"] <= TARGET_NFE[1]
           and r[scope]["saturated_pixel_share"] <= sat}  # images out of range are no candidates, whatever the judge says
    ok = {k: r for k, r in few.items() if r[scope]["consistency"] >= ref - TARGET_REL * abs(ref)}
    pick = min(ok, key=lambda k: (ok[k]["nfe_per_image"], -ok[k][scope]["consistency"])) if ok else \
        max(few, key=lambda k: few[k][scope]["consistency"], default=None)
    return {"reference": REFERENCE, "reference_consistency": ref, "nfe_range": list(TARGET_NFE), "tolerance_relative": TARGET_REL,
            "candidates": sorted(few), "max_saturated_pixel_share": sat,
            "meeting_target": sorted(ok), "target_holds": bool(ok), "favoured": pick,
            "favoured_vs_reference": paired(runs[pick][scope], runs[REFERENCE][scope]) if pick else None}


def parse_variant(text: str) -> tuple[str, dict]:
    """'x0grad:guidance_gradient=x0,id_weight=300' -> ('x0grad', {...}): [sample] keys set for a variant's runs,
    values read as YAML scalars, checked against the params schema."""
    import yaml
    from tasks.params import SCHEMA, ParamsError
    tag, _, body = text.partition(":")
    over = {}
    for item in filter(None, body.split(",")):
        key, eq, value = item.partition("=")
        if not eq or key.strip() not in SCHEMA["sample"] or isinstance(SCHEMA["sample"][key.strip()], dict):
            raise SystemExit(f"--variant {text!r}: {item!r} is not KEY=VALUE with KEY a [sample] setting")
        try:
            over[key.strip()] = SCHEMA["sample"][key.strip()].check(f"sample.{key.strip()}", yaml.safe_load(value))
        except ParamsError as e:
            raise SystemExit(f"--variant {text!r}: {e}") from None
    if not tag or not over:
        raise SystemExit(f"--variant {text!r}: expected NAME:KEY=VALUE[,KEY=VALUE...]")
    return tag, over


def sweep(art: Path, sample: dict, identities: int, embeddings: int, images: int, ddpm_images: int,
          samplers=SAMPLERS, real_faces: int = 64, device: str = "cpu", log=print,
          variants: dict[str, dict] | None = None, variant_samplers=VARIANT_SAMPLERS) -> dict:
    """Render the same plan with every sampler and score it; returns the 'runs' and 'verdict' sections.
    `variants` (name -> [sample] settings, e.g. another guidance) also render with each of `variant_samplers`,
    as runs named '<sampler>-<steps>+<name>', candidates in the verdict beside the stage's own guidance."""
    import torch
    p = {**sample, "num_identities": identities, "embeddings_per_identity": embeddings, "images_per_embedding": images}
    pipe, enc, real, pool = load_generation(art, device)
    plan = plan_identities(real, p, pool)
    judge = DlibJudge()
    t0 = time.perf_counter()
    mean = judge_reference_mean(judge, art, real_faces)
    judge_ref_s = time.perf_counter() - t0
    all_ids = list(range(identities))
    subset = plan["rows"][:ddpm_images]  # plan order: the first images of identity 0, then 1, ...
    sub_keys, sub_ids = {r["key"] for r in subset}, sorted({r["identity"] for r in subset})
    runs = {}
    todo = [(kind, steps, "", {}) for kind, steps in samplers]
    todo += [(kind, steps, tag, over) for tag, over in (variants or {}).items() for kind, steps in variant_samplers]
    for kind, steps, tag, over in todo:
        name = f"{kind}-{steps}" + (f"+{tag}" if tag else "")
        part = {**plan, "rows": subset} if kind == "ddpm" else plan
        ids = sub_ids if kind == "ddpm" else all_ids
        q = {**p, **over, "sampler": kind, "num_inference_steps": steps, "batch_size": min(p["batch_size"], len(part["rows"]))}
        with RowCounter(pipe.unet) as unet, RowCounter(enc) as encs:
            t0 = time.perf_counter()
            samples = render_block(pipe, enc, part, ids, q, device)
            secs = time.perf_counter() - t0
        pixels = decode_pngs(samples)
        ident = np.array([s["identity"] for s in samples])
        t1 = time.perf_counter()
        emb = centred_unit(judge.describe_all(pixels), mean)
        judge_s = time.perf_counter() - t1
        sub = np.array([s["key"] in sub_keys for s in samples])
        runs[name] = {"sampler": kind, "steps": steps, "images": len(samples), "batch_size": q["batch_size"],
                      "seconds": secs, "images_per_s": len(samples) / secs, "seconds_per_step_per_image": secs / steps / len(samples),
                      "nfe_per_image": unet.per_image(len(samples), q["batch_size"]),
                      "encoder_calls_per_image": encs.per_image(len(samples), q["batch_size"]),
                      "judge_seconds": judge_s}
        if over:
            runs[name]["settings"] = over
        if sub.any():
            runs[name]["subset"] = quality(emb[sub], ident[sub], pixels[sub])
        if kind != "ddpm":
            runs[name]["all"] = quality(emb, ident, pixels)
        log(f"{name}: {len(samples)} images in {secs:.1f} s ({runs[name]['images_per_s']:.2f} img/s), NFE "
            f"{runs[name]['nfe_per_image']:.0f}, consistency {(runs[name].get('all') or runs[name]['subset'])['consistency']:.4f}")
        del samples
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    out = {"runs": runs, "judge_reference_faces": real_faces, "judge_reference_seconds": judge_ref_s,
           "plan": {"identities": identities, "images_per_identity": embeddings * images, "ddpm_images": len(subset),
                    "ddpm_identities": len(sub_ids),
                    "resolution": pipe.unet.config.sample_size},
           # the stage's own guidance knobs, as the sample stage hands them to the pipeline
           "guidance": {k: v for k, v in sampling(p, pipe.METHOD).items() if k not in ("sampler", "num_inference_steps")}}
    full = [r for r in runs.values() if r["sampler"] != "ddpm" and "settings" not in r]  # the stage's own guidance
    if full and any(r["sampler"] == "ddpm" for r in runs.values()):
        # DDPM ran on a small batch, where a step costs more per image; at the others' batch a guided step costs
        # what theirs does (the same UNet + encoder forward and backward), so its cost there is steps x that
        step = min(r["seconds_per_step_per_image"] for r in full)
        out["ddpm_seconds_per_image_at_full_batch"] = {f"{r['sampler']}-{r['steps']}": r["steps"] * step
                                                       for r in runs.values() if r["sampler"] == "ddpm"}
    if REFERENCE in runs:
        out["verdict"] = verdict(runs, "all")
        if subset and "subset" in runs[REFERENCE]:
            out["verdict_on_ddpm_subset"] = verdict(runs, "subset")
        if "ddpm-1000" in runs and subset:
            out["vs_ddpm_1000_on_subset"] = {k: paired(r["subset"], runs["ddpm-1000"]["subset"]) for k, r in runs.items()
                                             if k != "ddpm-1000"}
    return out


def main(argv=None) -> int:
    ap = common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    ap.add_argument("--artifacts", type=Path, default=ROOT / "artifacts", help="a project's artifacts folder (generator, encoder, align)")
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml", help="its [sample] section sets the guidance")
    ap.add_argument("--identities", type=int, default=8)
    ap.add_argument("--embeddings", type=int, default=2, help="embeddings per identity")
    ap.add_argument("--images", type=int, default=2, help="images per embedding")
    ap.add_argument("--ddpm-images", type=int, default=2, help="images (the plan's first) 1000-step DDPM renders: ~1 min each")
    ap.add_argument("--real-faces", type=int, default=64, help="real faces whose mean dlib descriptor centres the judge")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=VALUE,...",
                    help="also render DDIM 20 and 10 with these [sample] settings (repeatable), e.g. "
                         "x0grad:guidance_gradient=x0,id_weight=300")
    a = ap.parse_args(argv)
    if not a.no_wait:
        wait_until_idle(a.max_load)
    sample = load_params(a.params)["sample"]
    cfg = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()}
    b = Bench("sampler_sweep", a.device, cfg)
    variants = dict(parse_variant(v) for v in a.variant)
    b.result.update(sweep(a.artifacts, sample, a.identities, a.embeddings, a.images, a.ddpm_images,
                          real_faces=a.real_faces, device=a.device, variants=variants))
    print(b.write(a.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
