"""Generate the dataset card (README.md) shipped inside every packaged dataset: counts, filters,
provenance, licence inheritance, intended and out-of-scope uses, the privacy audit and a sample grid.

    write_card(path, counts, privacy, shards, runs, params, package_run)   # called by flows/package.py
"""
from __future__ import annotations

from tasks.io import write_bytes


def _short(v) -> str:
    return f"`{str(v)[:16]}`" if v else "-"


def licence(allp: dict, augment: bool = False) -> str:
    """What the generator's training data and the encoder's weights imply for the images; an augmented set
    (ID-Booth) also ships the real photographs themselves."""
    a, e = allp["align"], allp["encoder"]
    source = a.get("train_source") or "lfw"
    if source == "lfw":
        data = ("The generator and the identity encoder were trained on the LFW train split (Labeled Faces in the "
                "Wild: no licence stated, published for face-verification research; news photographs whose copyright "
                "stays with their photographers).")
    else:
        data = (f"The generator and the identity encoder were trained on real faces imported from `{source}`: the "
                "terms of that set apply (CASIA-WebFace, MS1M and similar web-scraped sets are for non-commercial "
                "research only).")
    enc = ("The identity encoder was trained here on the same faces." if not e.get("pretrained") else
           f"The identity encoder's weights come from `{e['pretrained']}` (facexlib / insightface ArcFace weights are "
           "released for non-commercial research).")
    if augment:
        return (f"{data} {enc} This set contains those photographs of real people (aligned crops) and generated images "
                "of the same people: it carries the real data's terms and its subjects' rights, is **non-commercial "
                "research use only**, and must not be shared beyond what the real data's terms allow.")
    return (f"{data} {enc} The synthetic images derive from models trained on those faces, so they inherit the most "
            "restrictive of these terms: **non-commercial research use only**, unless the training data and weights "
            "are replaced by licensed ones and the dataset is regenerated.")


def operating_point(privacy: dict, pk: dict, applied: bool = True) -> str:
    """The privacy filter's operating point in plain words: the false-match rate on real impostor identity
    pairs its thresholds were set at (or that params gave them), and the share of real people it flags."""
    thr, cal = privacy["thresholds"], privacy["calibration"]
    verb = "is dropped" if applied else "is flagged (recorded, not dropped: these people are real by design)"
    share = (f"{privacy['encoder']['real_identities_at_threshold_to_another_real']:.0%} (encoder) and "
             f"{privacy['judge']['real_identities_at_threshold_to_another_real']:.0%} (judge) of the real training "
             "identities would be flagged against another real person")
    by_fmr = [m for m in ("encoder", "judge") if pk["privacy_threshold"][m] is None]
    if not by_fmr:
        return (f"Privacy: a synthetic identity {verb} when its centre reaches, to a real training identity's centre, "
                f"encoder cosine {thr['encoder']:.3f} or judge cosine {thr['judge']:.3f} (both set in params); at these "
                f"thresholds {share}.")
    fmr = cal[by_fmr[0]]["fmr"]
    pairs = {m: cal[m]["impostor_pairs"] for m in by_fmr}
    source = (f"{next(iter(pairs.values())):,}" if len(set(pairs.values())) == 1 else
              " and ".join(f"{n:,} ({m})" for m, n in pairs.items()))
    cosines = ", ".join(f"{m} cosine {thr[m]:.3f}" + ("" if m in by_fmr else " as set in params") for m in ("encoder", "judge"))
    return (f"Privacy: a synthetic identity {verb} when its centre is as close to a real training identity's centre "
            f"as different real people are at a false-match rate of {fmr:g} ({cosines}, from {source} pairs of "
            f"different real training identities); at this operating point {share}.")


def write_card(path, counts: dict, privacy: dict, shards: list[dict], runs: dict, allp: dict, package_run: dict) -> None:
    g, s, pk = allp["generator"], allp["sample"], allp["package"]
    prov = "\n".join(f"| {n} | {_short(r.get('code_version'))} | {_short(r.get('params_hash'))} | "
                     f"{', '.join(f'{k} {_short(v)}' for k, v in sorted(r.get('inputs', {}).items()))} |"
                     for n, r in {**runs, "package": package_run}.items())
    smp_in = runs.get("sample", {}).get("inputs", {})
    data_sha = "\n".join(f"  - `{n}`: `{h}`" for n, h in sorted(allp["data"]["sha256"].items()))
    if allp["align"].get("train_source"):  # the generator and encoder learnt from these faces, not LFW's
        imported = runs.get("align", {}).get("inputs", {}).get("train_source")
        data_sha = (f"  - training faces imported from `{allp['align']['train_source']}`: `{imported or '-'}`\n"
                    f"  - LFW, for the evaluation pairs only:\n" + data_sha.replace("  - ", "    - "))
    shard_rows = "\n".join(f"| {x['shard']} | {x['count']} | {x['bytes']} | `{x['sha256']}` |" for x in shards)
    dropped = "\n".join(f"| {r} | {n} |" for r, n in counts["dropped"].items())
    pm = {m: privacy[m] for m in ("encoder", "judge")}
    audit = "\n".join(f"| {m} | {privacy['thresholds'][m]:.3f} | {v['max_cos_mean']:.3f} | {v['max_cos_p95']:.3f} | "
                      f"{v['max_cos_max']:.3f} | {v['identities_flagged']} | {v['real_identities_at_threshold_to_another_real']:.0%} |"
                      for m, v in pm.items())
    unique = (f" at radius {privacy['unique_radius']:.3f}" + (" (the encoder's cosine at the same false-match rate)"
                                                             if pk["unique_radius"] is None else "")
              if privacy["unique_radius"] is not None else "")
    augment = g["method"] == "idbooth"
    if augment:
        q = s["idbooth"]
        conditioned = "source real | generated, the real identity's label; generated: noise seed, prompt, aligned"
        planned = (f"{counts['identities_in']} real training identities personalised (one rank-{g['idbooth']['rank']} LoRA each) x "
                   f"{s['embeddings_per_identity'] * s['images_per_embedding']} renders, prompts \"photo of sks person\" + one of "
                   f"{len(q['poses'])} pose wordings and {len(q['backgrounds'])} backgrounds;\n"
                   f"  {q['sampler']} {q['num_inference_steps']} steps, classifier-free guidance {q['guidance_scale']}; "
                   f"{'aligned by MTCNN to the ArcFace template' if q['align'] else 'not aligned'}"
                   + (f" ({counts['aligned']:.0%} of the renders had a face found and were warped)" if counts.get("aligned") is not None else ""))
    elif g["method"] == "cemiface":
        c = s["cemiface"]
        conditioned = "the similarity m to its inquiry identity it was rendered at"
        inquiry = (f"real training faces pairwise below cosine {c['inquiry_max_cosine']}" if c["inquiry"] == "real" else
                   f"{s['anchors']} anchors kept below cosine {s['privacy_threshold']} to every real training identity by the encoder")
        planned = (f"{s['num_identities']} inquiry identities ({inquiry}) x "
                   f"{s['embeddings_per_identity'] * s['images_per_embedding']} images at m = {c['m']};\n"
                   f"  {s['sampler']} {s['num_inference_steps']} steps, no guidance (CemiFace)")
    else:
        conditioned = "the yaw/pitch/roll it was conditioned on"
        planned = (f"{s['num_identities']} identities x {s['embeddings_per_identity']} embeddings x {s['images_per_embedding']} images;\n"
                   f"  {s['sampler']} {s['num_inference_steps']} steps, ID-preserving guidance weight {s['id_weight']} (beta {s['beta']}),\n"
                   f"  anchors: {s['anchors']} (kept below cosine {s['privacy_threshold']} to every real training identity by the encoder)")
    # An augmented set's people are real on purpose: its privacy thresholds and r-ball were computed but not applied.
    settings = ("privacy filters and uniqueness r-ball not applied (real identities by design; audit thresholds encoder "
                f"{privacy['thresholds']['encoder']:.3f}, judge {privacy['thresholds']['judge']:.3f})" if augment else
                f"privacy thresholds (identity-centre cosine) encoder {privacy['thresholds']['encoder']:.3f}, judge "
                f"{privacy['thresholds']['judge']:.3f}; uniqueness `{pk['uniqueness']}`{unique}")
    if augment:
        head = f"""# synthface augmented face-recognition dataset (ID-Booth)

**Real people.** Real training identities with their own photographs, augmented with generated images of
the same people (ID-Booth: a latent diffusion model fine-tuned per identity with LoRA), packaged as WebDataset
shards: {counts['real_images_out']} real faces (`jpg`, the aligned training crops unchanged) and
{counts['generated_images_out']} generated (`{pk['image_format']}`). Each sample holds the image, `cls` (the integer label,
shared by a person's real and generated images) and `json` ({conditioned})."""
        audit_text = """Not applicable as a filter: the identities are real people by design, so the privacy filters and the
uniqueness r-ball were not applied. The audit is still recorded (`privacy.parquet`): the highest cosine of
each rendered identity's centre to any real training identity - high values mean the renders kept their person."""
    else:
        head = f"""# synthface synthetic face-recognition dataset

Synthetic identities generated by an identity-conditioned diffusion model ({g['method']}), packaged as
WebDataset shards. Each sample holds the image (`{pk['image_format']}`, {g['resolution']} px), `cls` (the integer
label) and `json` (identity, anchor, embedding, image index, noise seed, {conditioned})."""
        audit_text = f"""For every synthetic identity, the highest cosine of its centre to any real training identity's centre
(`privacy.parquet`), by the identity encoder and by an independent judge (dlib's ResNet, descriptors
centred on the real faces' mean; up to {privacy['judge_images_per_identity'] or 'all'} images per identity). Identities at or above the
threshold were dropped."""
    text = f"""{head} `manifest.parquet` has one row per image with its shard and filter scores;
`index.wids.json` opens the set for random access (`wids.ShardListDataset`).

![sample grid](sample_grid.png)

## Counts
- images: **{counts['images_out']}**{f" ({counts['real_images_out']} real + {counts['generated_images_out']} kept" if augment else ""} of {counts['images_in']} generated{")" if augment else ""}; identities: **{counts['identities_out']}** of {counts['identities_in']}
- planned: {planned}
- mean identity consistency of the kept images (encoder cosine to their identity centre): {counts['mean_consistency']:.3f}
- faces re-detected by the aligner (MTCNN): {counts['faces_found']:.1%} of the generated images

## Filters (images dropped, first failing reason)
| reason | images |
|---|---|
{dropped}

Settings: {settings}; minimum
consistency {pk['min_consistency']}; face filter {'on' if pk['face_filter'] else 'off'}; at least
{pk['min_images_per_identity']} images per identity. Dropped images are listed in `rejects.parquet`.

{operating_point(privacy, pk, applied=not augment)}

## Privacy audit
{audit_text}

| model | threshold | mean | p95 | max | identities dropped | real identities this close to another real one |
|---|---|---|---|---|---|---|
{audit}

The last column is the reference: a threshold for one comparison, applied to the nearest of all real
identities, also flags that share of distinct real people against each other.

![privacy audit](privacy_hist.png)

A threshold is a margin, not a guarantee: a synthetic face can still resemble a real person, including
people outside the training data.

## Provenance
| stage | code | params | input digests (sha256) |
|---|---|---|---|
{prov}

- generator checkpoint (`artifacts/generator`): {_short(smp_in.get('generator'))}; identity encoder
  (`artifacts/encoder`): {_short(smp_in.get('encoder'))}
- input data (sha256):
{data_sha}

## Shards
| shard | samples | bytes | sha256 |
|---|---|---|---|
{shard_rows}

## Licence
{licence(allp, augment)}

## Intended and out-of-scope uses
- Intended: training and benchmarking face-recognition models; studying synthetic-data methods.
- Out of scope: identifying or verifying real people with these identities, surveillance, building
  profiles of people, any use that presents a synthetic identity as a real person, and commercial use
  while the licence above applies.
"""
    write_bytes(path, text.encode())
