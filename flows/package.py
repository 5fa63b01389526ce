"""package stage: sampled blocks -> filtered, privacy-audited WebDataset shards, manifest, card.

    python -m flows package   # params [package]; artifacts/{sample,encoder,align} -> artifacts/dataset

Filters, each a parameter, applied in this order (an image's reason is the first that fails):
  privacy_encoder / privacy_judge  a whole identity whose centre reaches the privacy threshold to any
                                   real training identity, by the encoder or by the independent dlib judge;
  low_consistency                  an image whose encoder cosine to its identity centre < min_consistency;
  no_face                          the aligner (MTCNN) finds no face in the image (face_filter: true);
  too_few_images                   an identity left with fewer than min_images_per_identity images;
  not_unique                       DCFace's r-ball on the surviving identities' encoder centres: one within
                                   unique_radius of an earlier kept one is dropped (uniqueness: drop) or
                                   relabelled as it (merge).
Identity-level thresholds left unset are the cosines real impostor identity pairs (centres of different real
training people) reach at the false-match rate package.privacy_fmr (tasks/filters.py); counts.json records
that operating point under privacy.calibration.
ID-Booth (generator.method = idbooth) renders real people on purpose: its privacy filters and r-ball do not
apply (the audit is still written), and the product is the augmented set - every planned identity's real
training faces (source "real", their JPEG bytes) beside its kept generated images (source "generated").

Outputs (artifacts/dataset): synthface-NNNNNN.tar shards (deterministic bytes, written atomically),
manifest.parquet (one row per kept image), rejects.parquet (one row per dropped image, with its reason:
the images themselves stay in artifacts/sample), privacy.parquet (one row per identity), shards.json
(sha256, count, bytes per shard), index.wids.json (random access), anchors.npy, counts.json,
privacy_hist.png, sample_grid.png and the dataset card README.md.
"""
from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
from PIL import Image
from prefect import flow, get_run_logger

from tasks.card import write_card
from tasks.describe import embed_set
from tasks.encoder import embed, load_encoder
from tasks.filters import REASONS, apply_filters, privacy_thresholds
from tasks.identity import centres, cos_to_centre
from tasks.io import atomic_path, write_bytes, write_json, write_parquet
from tasks.judge import centred_unit
from tasks.quality import nearest_real, real_nearest_other
from tasks.report import privacy_histogram, sample_grid
from tasks.shards import read_tar, write_shards, write_wids_index

from . import ROOT
from .common import RunRecord, device, params, stage_dir
from .judging import detect_set, judge_set

# plan columns the generator was conditioned on: ID3's pose and age, CemiFace's m, ID-Booth's prompt (and its alignment)
CONDITIONS = ("yaw", "pitch", "roll", "age", "m", "prompt", "aligned")


def judged_keys(keys: np.ndarray, labels: np.ndarray, per_identity: int) -> list[str]:
    """The first `per_identity` keys of every identity (0: all) - the faces the slow judge describes."""
    if per_identity <= 0:
        return sorted(keys.tolist())
    df = pd.DataFrame({"key": keys, "label": labels}).sort_values("key")
    return sorted(df.groupby("label").head(per_identity)["key"].tolist())


def identity_table(ids, syn: dict, real_c: dict, thr: dict) -> pd.DataFrame:
    """Per synthetic identity and model: highest cosine to a real training identity (real_c: model ->
    (real ids, their centres)) and which one."""
    out = pd.DataFrame({"identity": ids})
    for m in ("encoder", "judge"):
        sid, sc = centres(syn[m]["emb"], syn[m]["labels"])
        rid, rc = real_c[m]
        best, arg = nearest_real(sc, rc)
        col = pd.DataFrame({"identity": sid, f"max_cos_real_{m}": best, f"nearest_real_{m}": rid[arg].astype(int)})
        out = out.merge(col, on="identity", how="left")
        out[f"privacy_flag_{m}"] = out[f"max_cos_real_{m}"] >= thr[m]
    return out


@flow(name="package")
def package_flow(params_path: str = "params.yaml") -> dict:
    log = get_run_logger()
    allp = params(params_path)
    p = allp["package"]
    art = ROOT / "artifacts"
    smp, enc_dir, align = art / "sample", art / "encoder", art / "align"
    out = stage_dir("dataset")
    rec = RunRecord("package", p, out, {"sample": smp, "encoder": enc_dir, "align_manifest": align / "manifest.parquet"})
    plan = pd.read_parquet(smp / "plan.parquet").set_index("key")
    # the blocks the plan names, not whatever block-*.tar lies in the folder (a stale block of an earlier,
    # larger run would otherwise be packaged); a planned block that is not there is an error naming it
    blocks = [smp / b for b in sorted(plan["block"].unique())]
    missing = [b.name for b in blocks if not b.is_file()]
    if missing:
        raise FileNotFoundError(f"{smp}: the plan's blocks {missing[:3]} are missing ({len(missing)} of {len(blocks)}); rerun sample")
    augment = json.loads((smp / "run.json").read_text()).get("method") == "idbooth"  # real identities: the augmented set
    if augment:  # whether the aligner found each render's face is known once rendered: the blocks' json, not the plan
        rendered = {s["__key__"]: json.loads(s["json"]) for b in blocks for s in read_tar(b)}
        plan["aligned"] = [bool(rendered.get(k, {}).get("aligned", False)) for k in plan.index]
    am = pd.read_parquet(align / "manifest.parquet")
    am = am[am["split"] == "train"]
    real_shards = sorted(align / s for s in am["shard"].unique())

    # 1. describe: the encoder on every image, the judge on up to judge_images_per_identity per identity
    encoder = load_encoder(enc_dir, device())
    describe = lambda ims: embed(encoder, ims)  # noqa: E731
    syn = {"encoder": embed_set(describe, blocks)}
    real = {"encoder": embed_set(describe, real_shards)}
    n_judge = p["judge_images_per_identity"]
    real["judge"] = judge_set(real_shards, judged_keys(real["encoder"]["keys"], real["encoder"]["labels"], n_judge))
    syn["judge"] = judge_set(blocks, judged_keys(syn["encoder"]["keys"], syn["encoder"]["labels"], n_judge))
    mean = real["judge"]["emb"].mean(0)  # dlib cosines are read after centring on the real faces (tasks/judge.py)
    for s in (real, syn):
        s["judge"] = {**s["judge"], "emb": centred_unit(s["judge"]["emb"], mean)}
    faces = detect_set(blocks)
    keys, ident = syn["encoder"]["keys"], syn["encoder"]["labels"].astype(int)
    if list(keys) != plan.index.tolist():
        raise ValueError("package: the sample blocks do not match plan.parquet (rerun the sample stage)")

    # 2. thresholds: given, or (unset) at package.privacy_fmr on the real training identities' centres
    real_c = {m: centres(real[m]["emb"], real[m]["labels"]) for m in ("encoder", "judge")}
    thr, radius, calibration = privacy_thresholds(p, {m: c for m, (_, c) in real_c.items()})

    ids = np.unique(ident)
    table = identity_table(ids, syn, real_c, thr)
    cons = cos_to_centre(syn["encoder"]["emb"], ident)
    face_found = ~np.isnan(faces["poses"]).any(1)
    private = {m: table[f"privacy_flag_{m}"].to_numpy() & (not augment) for m in ("encoder", "judge")}
    reason, owner, merged_into = apply_filters(ident, syn["encoder"]["emb"], cons, face_found, ids, private["encoder"],
                                               private["judge"], {**p, "uniqueness": "keep"} if augment else p, radius)
    duplicate = (merged_into >= 0) & (merged_into != ident)
    rep = np.full(len(ids), -1)
    rep[np.searchsorted(ids, ident)] = merged_into  # one value per identity
    table["unique_rep"] = rep
    keep = reason == ""
    if not keep.any():
        raise ValueError(f"package: every image was filtered out ({pd.Series(reason).value_counts().to_dict()}); "
                         "loosen the [package] filters")

    # 5. the manifest: one row per image with its plan, filter scores and fate
    judge_c = dict(zip(syn["judge"]["keys"], cos_to_centre(syn["judge"]["emb"], syn["judge"]["labels"])))
    # the augmented set keeps every planned (real) identity: its real faces stay even when no render survives
    labels = {o: n for n, o in enumerate(sorted(set((ident if augment else owner[keep]).tolist())))}
    rows = plan.reset_index()
    rows = rows.assign(anchor=rows["identity"], owner_identity=owner, label=[labels.get(o, -1) for o in owner],
                       consistency=cons.round(6), judge_consistency=[judge_c.get(k, np.nan) for k in keys],
                       face_found=face_found, reason=reason, **({"source": "generated"} if augment else {}))
    rows = rows.merge(table.drop(columns=["unique_rep"]), on="identity", how="left")
    rows["merged_into"] = np.where(duplicate & (p["uniqueness"] == "merge"), merged_into, -1)
    kept = rows[keep].reset_index(drop=True)

    # 6. shards: streamed block by block in plan order, never the whole set decoded
    ext = p["image_format"]
    by_key = kept.set_index("key")
    conditions = [c for c in CONDITIONS if c in kept.columns]  # what the generator was conditioned on, per method
    real_rows: list[dict] = []  # the augmented set's real faces, in the order samples() writes them

    def samples():
        for b in blocks:
            for s in read_tar(b):
                k = s["__key__"]
                if k in by_key.index:
                    r = by_key.loc[k]
                    yield {"__key__": k, ext: s["png"] if ext == "png" else to_jpeg(s["png"]), "cls": int(r["label"]),
                           "json": {"identity": int(r["owner_identity"]), "label": int(r["label"]), "anchor": int(r["anchor"]),
                                    "embedding": int(r["embedding"]), "image": int(r["image"]), "seed": int(r["seed"]),
                                    **{c: _jsonable(r[c]) for c in conditions},
                                    **({"source": "generated", "real_label": int(r["real_label"])} if augment else {})}}
        if augment:
            yield from real_faces(real_shards, am, plan, labels, real_rows)

    shards = write_shards(samples(), out, "synthface", p["shard_size"])
    if real_rows:  # nullable columns, so the generated rows' seeds and flags survive beside the real rows' gaps
        kept = kept.astype({c: "Int64" for c in kept.select_dtypes("integer")} | {c: "boolean" for c in kept.select_dtypes("bool")})
        kept = pd.concat([kept, pd.DataFrame(real_rows)], ignore_index=True)
    kept["shard"] = [s["shard"] for s in shards for _ in range(s["count"])]
    write_parquet(out / "manifest.parquet", kept.drop(columns=["reason"]))
    write_parquet(out / "rejects.parquet", rows[~keep].reset_index(drop=True))
    write_parquet(out / "privacy.parquet", table)
    write_json(out / "shards.json", shards)
    write_wids_index(out / "index.wids.json", shards, "synthface")
    write_bytes(out / "anchors.npy", (smp / "anchors.npy").read_bytes())

    counts = {"images_in": int(len(keys)), "images_out": int(len(kept)), "identities_in": int(len(ids)),
              "identities_out": len(labels), "dropped": {r: int((reason == r).sum()) for r in REASONS},
              "identities_merged": int(len(set(ident[duplicate].tolist()))) if p["uniqueness"] == "merge" else 0,
              "mean_consistency": float(cons[keep].mean()) if keep.any() else None,
              "faces_found": float(face_found.mean()), "shards": len(shards),
              **({"generated_images_out": int(keep.sum()), "real_images_out": len(real_rows),
                  "aligned": float(kept.loc[kept["source"] == "generated", "aligned"].astype(float).mean()) if "aligned" in kept else None}
                 if augment else {})}
    # the reference: how many distinct real people are this close to another real person (1:N comparisons)
    real_other = {m: real_nearest_other(real_c[m][1]) for m in ("encoder", "judge")}
    priv = {"thresholds": thr, "calibration": calibration, "unique_radius": radius,
            "judge_images_per_identity": n_judge, "real_identities": {m: int(len(np.unique(real[m]["labels"]))) for m in real},
            **{m: {"max_cos_mean": float(table[f"max_cos_real_{m}"].mean()), "max_cos_max": float(table[f"max_cos_real_{m}"].max()),
                   "max_cos_p95": float(np.percentile(table[f"max_cos_real_{m}"], 95)),
                   "identities_flagged": int(table[f"privacy_flag_{m}"].sum()),
                   "real_identities_at_threshold_to_another_real": float((real_other[m] >= thr[m]).mean())}
               for m in ("encoder", "judge")}}
    write_json(out / "counts.json", {**counts, "privacy": priv})
    privacy_histogram(out / "privacy_hist.png", {m: {"synthetic -> nearest real": table[f"max_cos_real_{m}"].to_numpy(),
                                                     "real -> nearest other real": real_other[m]} for m in real_other}, thr)
    grid_ids = sorted(set(kept["owner_identity"].tolist()))[:p["grid_identities"]]
    grid_labels = {labels[i] for i in grid_ids}
    g = embed_set(None, sorted(out / s for s in kept[kept["label"].isin(grid_labels)]["shard"].unique()), grid_ids=grid_labels)
    with atomic_path(out / "sample_grid.png") as tmp:
        sample_grid(g["grid"].astype(np.uint8), g["grid_labels"].astype(int), p["grid_identities"], p["grid_images"]).save(tmp, format="PNG")
    runs = {n: json.loads((art / d / "run.json").read_text())
            for n, d in [("align", "align"), ("encoder", "encoder"), ("generator", "generator"), ("sample", "sample")]
            if (art / d / "run.json").exists()}
    write_card(out / "README.md", counts, priv, shards, runs, allp, rec.info)
    log.warning(f"package: {counts}")
    return rec.finish(counts=counts, privacy=priv)


def real_faces(real_shards: list, am: pd.DataFrame, plan: pd.DataFrame, labels: dict, rows: list[dict]):
    """The augmented set's real half: every training face of the planned identities, under the label of the
    identity that renders it (their JPEG bytes unchanged); appends one manifest row per face to `rows`."""
    identity_of = {int(r): int(i) for i, r in plan[["identity", "real_label"]].drop_duplicates().to_numpy()}
    name = dict(zip(am["key"], am["identity"]))
    for sh in real_shards:
        for s in read_tar(sh):
            i = identity_of.get(int(s["cls"]))
            if i is None:
                continue
            label = labels[i]
            rows.append({"key": f"real-{s['__key__']}", "identity": i, "owner_identity": i, "anchor": i, "label": label,
                         "real_label": int(s["cls"]), "real_name": name.get(s["__key__"], ""), "source": "real"})
            yield {"__key__": f"real-{s['__key__']}", "jpg": s.get("jpg", s.get("png")), "cls": label,
                   "json": {"identity": i, "label": label, "real_label": int(s["cls"]), "source": "real"}}


def _jsonable(v):
    """A plan value for the shard json as the plan holds it: flag, integer, float or text."""
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    return v if isinstance(v, str) else int(v) if isinstance(v, (int, np.integer)) else float(v)


def to_jpeg(png: bytes, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    Image.open(io.BytesIO(png)).convert("RGB").save(buf, format="JPEG", quality=quality, subsampling=0)
    return buf.getvalue()

