"""evaluate stage: the papers' table - verification of each training set's FR model (same recipe) on the
held-out LFW folds and on every insightface .bin under evaluate.benchmarks_dir - plus the dataset-quality
metrics by the independent dlib judge and by the identity encoder, side by side, and the figures.

The rows: all real training faces (train_fr_real), a real subset the synthetic set's size (train_fr_matched;
report.json `synthetic_over_matched_real` is the synthetic / size-matched real accuracy on the held-out LFW
pairs) and the synthetic set (train_fr). quality.json's `real_baseline` holds the judge's pair acceptance and
MTCNN's detection rate on the real training faces downsampled to the synthetic images' resolution and at
their own, next to the synthetic set's, with the product's synthetic / real ratios.

    python -m flows evaluate   # params [evaluate] -> metrics/report.{json,md}, metrics/quality.json,
                               #   plots/roc.csv, plots/{sample_grid,cosine_hist,privacy_hist}.png,
                               #   artifacts/evaluate/lfw_heldout.bin (the held-out pairs as a .bin)

Drop lfw.bin, cfp_fp.bin, agedb_30.bin, calfw.bin, cplfw.bin (insightface's files) into the benchmarks
folder to get the five-benchmark average; they are read with a restricted unpickler.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from prefect import flow, get_run_logger

from tasks.benchmarks import LFW_PEOPLE, build_bin, find_bins, read_bin, verify_images, write_bin
from tasks.describe import embed_bin, embed_set, smallest_side
from tasks.encoder import embed, load_encoder
from tasks.io import atomic_path, write_json
from tasks.judge import centred_unit
from tasks.quality import pair_cosines, pose_spread, privacy_leakage, quality, real_baseline, real_nearest_other
from tasks.identity import centres
from tasks.report import (accuracy_ratio, cosine_histograms, markdown, privacy_histogram, report_table, sample_grid,
                          write_markdown)
from tasks.shards import read_tar
from tasks.verification import roc, verify

from . import ROOT
from .common import RunRecord, device, params, stage_dir
from .judging import detect_set, judge_bin, judge_set


REAL, MATCHED = "real (LFW train split)", "real (LFW train split, size-matched)"
LOW = "judge (dlib) at synthetic resolution"  # the real faces' judge column, downsampled as the synthetic images are


def heldout_bin(align: Path, out: Path) -> Path:
    """The held-out LFW pairs (align's eval folds) as an insightface .bin, pairs in eval_pairs order."""
    pairs = pd.read_parquet(align / "eval_pairs.parquet")
    m = pd.read_parquet(align / "manifest.parquet")
    images = {s["__key__"]: s["jpg"] for sh in sorted(m[m["split"] == "eval"]["shard"].unique()) for s in read_tar(align / sh)}
    bins, issame = build_bin(zip(pairs["key_a"], pairs["key_b"], pairs["issame"]), images)
    write_bin(out / "lfw_heldout.bin", bins, issame)
    return out / "lfw_heldout.bin"


def verify_bin(emb: np.ndarray, issame: np.ndarray, p: dict) -> dict:
    return verify(emb[0::2], emb[1::2], issame, p["folds"], p["far"])


def cos_threshold(res: dict) -> float:
    """The squared-L2 threshold on unit vectors as a cosine: d = 2 - 2 cos."""
    return 1.0 - res["threshold"] / 2.0


def first_identities(m: pd.DataFrame, n: int) -> set[str]:
    """Keys of the first n identities by label: whole identities, so per-identity metrics stay exact."""
    labels = sorted(m["label"].unique())[:n]
    return set(m[m["label"].isin(labels)]["key"])


@flow(name="evaluate")
def evaluate_flow(params_path: str = "params.yaml") -> dict:
    log = get_run_logger()
    allp = params(params_path)
    p = allp["evaluate"]
    art = ROOT / "artifacts"
    align, ds, out = art / "align", art / "dataset", stage_dir("evaluate")
    metrics, plots = ROOT / "metrics", ROOT / "plots"
    metrics.mkdir(exist_ok=True); plots.mkdir(exist_ok=True)
    method = allp["generator"]["method"]  # ID-Booth's set is real faces plus renders of the same people
    synth_name = p["synthetic_label"] or (f"real + generated ({method})" if method == "idbooth" else f"synthetic ({method})")
    models = {REAL: art / "fr_real", MATCHED: art / "fr_real_matched", synth_name: art / "fr_synthetic"}
    bench_dir = ROOT / p["benchmarks_dir"]
    benches = {"lfw_heldout": heldout_bin(align, out), **find_bins(bench_dir)}
    rec = RunRecord("evaluate", p, out, {**{k: v for k, v in benches.items()}, "fr_real": art / "fr_real",
                                         "fr_real_matched": art / "fr_real_matched",
                                         "fr_synthetic": art / "fr_synthetic", "encoder": art / "encoder",
                                         "dataset": ds / "manifest.parquet"})
    dev = device()
    describers = {name: (lambda ims, enc=load_encoder(d, dev): embed(enc, ims)) for name, d in models.items()}
    encoder = load_encoder(art / "encoder", dev)
    describe_encoder = lambda ims: embed(encoder, ims)  # noqa: E731  (the judge runs in cached tasks: flows/judging.py)
    quality_models = ("judge (dlib)", "encoder")

    # 1. the table: every training set's FR model on every benchmark
    results: dict[str, dict] = {n: {} for n in models}
    roc_rows, heldout, skipped = [], None, {}
    for bench, path in benches.items():
        bins, issame = read_bin(path)
        verify_images(path, bins)
        log.warning(f"evaluate: {bench}: {len(issame)} pairs from {path.name}")
        if len(issame) < p["folds"] or issame.all() or not issame.any():
            skipped[bench] = f"{len(issame)} pairs ({int(issame.sum())} matched): too few for {p['folds']} folds of both kinds"
            log.warning(f"evaluate: skipping {bench}: {skipped[bench]}")
            if bench == "lfw_heldout":
                raise ValueError(f"the held-out LFW pairs are unusable: {skipped[bench]} (raise align.max_pairs_per_fold)")
            continue
        for name, describe in describers.items():
            e = embed_bin(describe, bins)
            results[name][bench] = verify_bin(e, issame, p)
            roc_rows += [{"benchmark": bench, "training_set": name, **r} for r in roc(e[0::2], e[1::2], issame)]
            log.warning(f"evaluate: {name} on {bench}: {results[name][bench]['accuracy']:.4f} +- {results[name][bench]['accuracy_std']:.4f}")
        if bench == "lfw_heldout":  # to calibrate the quality models' same-person thresholds on held-out real pairs
            heldout = (issame, {"judge (dlib)": judge_bin(path), "encoder": embed_bin(describe_encoder, bins)})
    runs = {n: json.loads((d / "run.json").read_text()) for n, d in models.items()}
    info = {n: {"images": r.get("train_images", 0) + r.get("val_images", 0),
                "identities": r.get("train_identities", 0) + r.get("val_identities", 0),
                "chosen_epoch": r.get("chosen_epoch"), "chosen_val_accuracy": r.get("chosen_val_accuracy")}
            for n, r in ((n, run.get("training", {})) for n, run in runs.items())}
    size = runs[MATCHED]["size_match"]  # what it was matched to, and any shortfall (tasks/matched.py)
    info[MATCHED]["size_match"] = {k: size[k] for k in ("target", "selected", "shortfall", "matched", "distribution")}
    for n in (REAL, MATCHED):  # the real rows trained on LFW's people: LFW-derived benchmark files are not held out
        info[n]["not_held_out"] = [b for b in benches if b in LFW_PEOPLE]
    table = report_table(results, info)
    ratio = accuracy_ratio(table, synth_name, MATCHED)
    write_json(metrics / "report.json", {**table, "synthetic_over_matched_real": ratio,
                                         **({"skipped_benchmarks": skipped} if skipped else {})})
    with atomic_path(plots / "roc.csv") as tmp:
        pd.DataFrame(roc_rows).to_csv(tmp, index=False)

    # 2. dataset quality, synthetic vs real training faces, by the judge and by the encoder
    dm = pd.read_parquet(ds / "manifest.parquet")
    am = pd.read_parquet(align / "manifest.parquet"); am = am[am["split"] == "train"]
    sets = {"synthetic": (sorted(ds / s for s in dm["shard"].unique()), dm), "real": (sorted(align / s for s in am["shard"].unique()), am)}
    emb: dict = {}
    poses: dict = {}
    judged: dict = {}
    grid_ids = set(sorted(dm["label"].unique())[:p["grid_identities"]])
    for s, (shards, m) in sets.items():
        judged[s] = sorted(first_identities(m, p["judge_max_identities"]))
        emb[("encoder", s)] = embed_set(describe_encoder, shards, grid_ids=grid_ids if s == "synthetic" else ())
        emb[("judge (dlib)", s)] = judge_set(shards, judged[s])
        poses[s] = detect_set(shards)  # every face, re-detected by the aligner
    # the real baseline: the same real faces downsampled to the synthetic images' resolution, then the same path
    # (the judge on the judged identities only, as above; the detector on every face)
    res = {s: smallest_side(shards) for s, (shards, _) in sets.items()}
    low = res["synthetic"] if 0 < res["synthetic"] < res["real"] else None  # None: they are the real faces as they are
    if low:
        emb[(LOW, "real")] = judge_set(sets["real"][0], judged["real"], low)
        poses[LOW] = detect_set(sets["real"][0], low)
    judge_mean = emb[("judge (dlib)", "real")]["emb"].mean(0)
    for key in [k for k in emb if k[0] in ("judge (dlib)", LOW)]:
        emb[key]["emb"] = centred_unit(emb[key]["emb"], judge_mean)
    heldout[1]["judge (dlib)"] = centred_unit(heldout[1]["judge (dlib)"], judge_mean)
    calibration = {m: verify_bin(e, heldout[0], p) for m, e in heldout[1].items()}
    thr = {m: cos_threshold(calibration[m]) for m in quality_models}
    real_c = {mod: centres(emb[(mod, "real")]["emb"], emb[(mod, "real")]["labels"])[1] for mod in quality_models}
    qual, panels, leak = {"synthetic": {}, "real": {}}, {}, {}
    for s in sets:
        for mod in quality_models:
            e, lab = emb[(mod, s)]["emb"], emb[(mod, s)]["labels"]
            qual[s][mod] = quality(e, lab, thr[mod], p["unique_radius"], real_c[mod] if s == "synthetic" else None)
            panels[(mod, s)] = (*pair_cosines(e, lab, p["hist_pairs"]), thr[mod])
        judged_ids = np.unique(emb[("judge (dlib)", s)]["labels"])
        if len(judged_ids) < len(np.unique(emb[("encoder", s)]["labels"])):
            # the judge saw a subset of identities: the encoder on that same subset is the side-by-side column
            e = emb[("encoder", s)]
            sel = np.isin(e["labels"], judged_ids)
            qual[s]["encoder (judged identities)"] = quality(e["emb"][sel], e["labels"][sel], thr["encoder"], p["unique_radius"],
                                                             real_c["encoder"] if s == "synthetic" else None)
        qual[s]["pose"] = pose_spread(poses[s]["poses"], poses[s]["labels"])
    if low:
        e = emb[(LOW, "real")]
        qual["real"][LOW] = {**quality(e["emb"], e["labels"], thr["judge (dlib)"], p["unique_radius"]), "resolution": low}
    measured = {s: {"quality": qual[s]["judge (dlib)"], "resolution": res[s], "faces_found": qual[s]["pose"]["faces_found"]}
                for s in sets}
    at_low = measured["real"] if not low else {"quality": qual["real"][LOW], "resolution": low,
                                               "faces_found": pose_spread(poses[LOW]["poses"], poses[LOW]["labels"])["faces_found"]}
    base = real_baseline(measured["synthetic"], at_low, measured["real"])
    # each set's face-detection rate beside its figures, the real one at the synthetic resolution (like for like)
    qual["synthetic"].update(faces_found=measured["synthetic"]["faces_found"], faces_found_resolution=res["synthetic"])
    qual["real"].update(faces_found=at_low["faces_found"], faces_found_resolution=at_low["resolution"],
                        faces_found_full_resolution=measured["real"]["faces_found"], full_resolution=res["real"])
    for mod in quality_models:
        synth_c = centres(emb[(mod, "synthetic")]["emb"], emb[(mod, "synthetic")]["labels"])[1]
        leak[mod] = {"synthetic -> nearest real": privacy_leakage(synth_c, real_c[mod]),
                     "real -> nearest other real": real_nearest_other(real_c[mod])}
    quality_out = {"calibration_lfw_heldout": {m: {"accuracy": c["accuracy"], "accuracy_std": c["accuracy_std"],
                                                   "same_person_cos_threshold": thr[m]} for m, c in calibration.items()},
                   "judge_max_identities": p["judge_max_identities"],
                   "judge_cosines": "dlib descriptors centred on the judged real training faces' mean, then normalised", **qual,
                   "real_baseline": base}
    write_json(metrics / "quality.json", quality_out)
    write_markdown(metrics / "report.md", markdown(table, list(benches), qual, p["far"], ratio, base))
    cosine_histograms(plots / "cosine_hist.png", panels)
    privacy_histogram(plots / "privacy_hist.png", leak, thr)
    g = emb[("encoder", "synthetic")]
    with atomic_path(plots / "sample_grid.png") as tmp:
        sample_grid(g["grid"].astype(np.uint8), g["grid_labels"].astype(int), p["grid_identities"], p["grid_images"]).save(tmp, format="PNG")
    for n, r in table.items():
        log.warning(f"evaluate: {n}: average accuracy {r['average_accuracy']:.4f} over {len(r['benchmarks'])} benchmark(s)")
    return rec.finish(report=table, quality=quality_out)
