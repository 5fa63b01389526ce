"""The evaluation report: one row per training set, one column per benchmark plus their average (as the
papers' tables), the dataset-quality metrics side by side per model, and the figures (matplotlib PNGs).

    rows = {"real": {"lfw_heldout": verify(...), ...}, "synthetic (id3)": {...}}
    table = report_table(rows, info)                      # {"<set>": {..., "average_accuracy": ..}}
    ratio = accuracy_ratio(table, "synthetic (id3)", "real (LFW train split, size-matched)")   # on lfw_heldout
    write_markdown(path, markdown(table, benchmarks, quality, fars, ratio, baseline))   # metrics/report.md
    cosine_histograms(path, panels);  privacy_histogram(path, series, thresholds)
"""
from __future__ import annotations

import numpy as np

from .benchmarks import HELDOUT, STANDARD
from .io import atomic_path, write_bytes


def report_table(results: dict[str, dict[str, dict]], info: dict[str, dict]) -> dict:
    """results[training set][benchmark] = verify() output. The average is over the benchmark files (the
    held-out LFW folds alone when there are none, so LFW pairs never count twice), and over the papers'
    five when all five ran (the comparable figure). info[name]["not_held_out"] lists benchmarks whose
    people that training set saw."""
    table = {}
    for name, per_bench in results.items():
        accs = {b: r["accuracy"] for b, r in per_bench.items()}
        averaged = [b for b in accs if b != HELDOUT] or list(accs)
        row = {**info.get(name, {}), "benchmarks": per_bench, "average_accuracy": float(np.mean([accs[b] for b in averaged])),
               "average_over": averaged}
        if all(s in accs for s in STANDARD):
            row["average_accuracy_standard5"] = float(np.mean([accs[s] for s in STANDARD]))
        table[name] = row
    return table


def accuracy_ratio(table: dict, synthetic: str, matched: str, benchmark: str = HELDOUT) -> dict:
    """Accuracy of the synthetic row over the size-matched real row's on one benchmark (the held-out LFW
    pairs: the one every report has), with both figures and whether the real row really matched in size."""
    s, m = (table[n]["benchmarks"].get(benchmark, {}).get("accuracy") for n in (synthetic, matched))
    return {"benchmark": benchmark, "synthetic": synthetic, "matched_real": matched,
            "synthetic_accuracy": s, "matched_real_accuracy": m,
            "ratio": None if s is None or not m else float(s) / float(m),
            "size_matched": table[matched].get("size_match", {}).get("matched")}


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def markdown(table: dict, benchmarks: list[str], quality: dict, fars: list[float], ratio: dict | None = None,
             baseline: dict | None = None) -> str:
    """ratio: accuracy_ratio(); baseline: quality.real_baseline() - each a paragraph when given."""
    lines = ["# Evaluation report", "",
             "Verification accuracy (%) of the one fixed FR recipe ([train_fr], METHODS.md section 5) trained on each "
             "training set; insightface protocol (flip fusion, squared L2, 10 contiguous folds, threshold from "
             "arange(0, 4, 0.01) chosen on 9 folds). Checkpoints were chosen on a validation split of held-out "
             "training identities, never on these benchmarks.", ""]
    has5 = any("average_accuracy_standard5" in r for r in table.values())
    head = ["training set", "images", "identities", *benchmarks, "average"] + (["average (5 standard)"] if has5 else [])
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    short = {n: r["size_match"] for n, r in table.items() if r.get("size_match", {}).get("matched") is False}
    for name, r in table.items():
        cells = [name + (" ‡" if name in short else ""), str(r.get("images", "-")), str(r.get("identities", "-"))]
        cells += [f"{_pct(r['benchmarks'][b]['accuracy'])} ± {_pct(r['benchmarks'][b]['accuracy_std'])}"
                  + (" †" if b in r.get("not_held_out", ()) else "") if b in r["benchmarks"] else "-" for b in benchmarks]
        cells.append(_pct(r["average_accuracy"]))
        if has5:
            cells.append(_pct(r.get("average_accuracy_standard5")))
        lines.append("| " + " | ".join(cells) + " |")
    if any(r.get("not_held_out") for r in table.values()):
        lines += ["", "† that training set contains this benchmark's people (LFW, CALFW and CPLFW are built from LFW's "
                      "people): not a held-out figure. `lfw_heldout` is."]
    for n, m in short.items():
        lines += ["", f"‡ {n}: the real training split cannot match the synthetic set's size ({m['target']['images']} "
                      f"images / {m['target']['identities']} identities): it is {m['shortfall']['images']} images and "
                      f"{m['shortfall']['identities']} identities short."]
    lines += ["", "The average is over " + ", ".join(next(iter(table.values()))["average_over"]) + "."] if table else []
    if ratio is not None:
        lines += ["", f"Synthetic / size-matched real accuracy on {ratio['benchmark']}: "
                      + ("-" if ratio["ratio"] is None else f"{ratio['ratio']:.3f}")
                      + f" ({_pct(ratio['synthetic_accuracy'])} % / {_pct(ratio['matched_real_accuracy'])} %)"
                      + ("" if ratio["size_matched"] is not False else "; the real row is smaller than the synthetic set (‡)")
                      + "."]
    for far in fars:
        key = f"tar_at_far_{far:g}"
        if not any(v[f"{key}_resolved"] for r in table.values() for v in r["benchmarks"].values()):
            lines += ["", f"TAR at FAR = {far:g}: no benchmark here has enough impostor pairs to resolve it."]
            continue
        lines += ["", f"TAR (%) at FAR = {far:g} (* : the benchmark has too few impostor pairs to resolve this FAR; "
                      "the figure is TAR at the lowest FAR it resolves)", "",
                  "| training set | " + " | ".join(benchmarks) + " |", "|" + "---|" * (len(benchmarks) + 1)]
        for name, r in table.items():
            cells = []
            for b in benchmarks:
                v = r["benchmarks"].get(b)
                cells.append("-" if v is None else _pct(v[key]) + ("" if v[f"{key}_resolved"] else "*"))
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for set_name, per_model in quality.items():
        models = [m for m, v in per_model.items() if m != "pose" and isinstance(v, dict)]
        lines += ["", f"Dataset quality of the {set_name} set (METHODS.md section 7), per model", "",
                  "| metric | " + " | ".join(models) + " |", "|" + "---|" * (len(models) + 1)]
        for k in per_model[models[0]]:
            lines.append(f"| {k} | " + " | ".join(_fmt(per_model[m].get(k)) for m in models) + " |")
    poses = {s: q["pose"] for s, q in quality.items() if "pose" in q}
    if poses:
        keys = list(next(iter(poses.values())))
        lines += ["", "Head pose spread within identities (faces re-detected by MTCNN, 5-landmark pose in [-1, 1])", "",
                  "| set | " + " | ".join(keys) + " |", "|" + "---|" * (len(keys) + 1)]
        lines += [f"| {s} | " + " | ".join(_fmt(v[k]) for k in keys) + " |" for s, v in poses.items()]
    if baseline is not None:
        lines += ["", "Real baseline: the judge's pair acceptance at its calibrated threshold (cosine "
                      f"{baseline['judge_same_person_cos_threshold']:.3f}) and MTCNN's face-detection rate, on the real "
                      "training faces downsampled to the synthetic resolution and at their own:", "",
                  "| faces | resolution (px) | same-identity pairs accepted | different-identity pairs accepted "
                  "| faces found |", "|---|---|---|---|---|"]
        for label, k in (("synthetic", "synthetic"), ("real, at the synthetic resolution", "real_at_synthetic_resolution"),
                         ("real, full resolution", "real_at_full_resolution")):
            e = baseline[k]
            lines.append(f"| {label} | {e['resolution']} | {_pct(e['same_identity_pairs_accepted'])} % | "
                         f"{_pct(e['different_identity_pairs_accepted'])} % | {_pct(e['faces_found'])} % |")
        lines += ["", _ratios_line(baseline["ratios"], " - the like-for-like baseline"), "",
                  _ratios_line(baseline["ratios_vs_full_resolution"], "")]
    return "\n".join(lines) + "\n"


def _ratios_line(r: dict, what: str) -> str:
    def text(v, met):
        return "- (the real figure is 0)" if v is None else f"{v:.2f} ({'met' if met else 'not met'})"
    return (f"Synthetic / real ({r['real_resolution']} px){what}: different-identity acceptance "
            f"{text(r['different_identity_synthetic_over_real'], r['different_identity_meets_target'])} (target <= "
            f"{r['different_identity_target_max']:g}), same-identity acceptance "
            f"{text(r['same_identity_synthetic_over_real'], r['same_identity_meets_target'])} (target >= "
            f"{r['same_identity_target_min']:g}).")


def write_markdown(path, text: str) -> None:
    write_bytes(path, text.encode())


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path) -> None:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    _plt().close(fig)


def cosine_histograms(path, panels: dict[tuple[str, str], tuple[np.ndarray, np.ndarray, float]]) -> None:
    """panels[(model, set)] = (intra cosines, inter cosines, same-person threshold) -> one PNG grid."""
    plt = _plt()
    models = list(dict.fromkeys(m for m, _ in panels)); sets = list(dict.fromkeys(s for _, s in panels))
    fig, axes = plt.subplots(len(models), len(sets), figsize=(4.5 * len(sets), 3.2 * len(models)), squeeze=False)
    bins = np.linspace(-1, 1, 81)
    for (m, s), (intra, inter, thr) in panels.items():
        ax = axes[models.index(m)][sets.index(s)]
        ax.hist(inter, bins=bins, alpha=0.6, density=True, label=f"inter-identity ({len(inter)})")
        ax.hist(intra, bins=bins, alpha=0.6, density=True, label=f"intra-identity ({len(intra)})")
        ax.axvline(thr, color="k", ls="--", lw=1, label=f"same-person threshold {thr:.2f}")
        ax.set_title(f"{s} - {m}", fontsize=10); ax.set_xlabel("cosine"); ax.legend(fontsize=7)
    _save(fig, path)


def privacy_histogram(path, series: dict[str, dict[str, np.ndarray]], thresholds: dict[str, float]) -> None:
    """series[model][label] = per-identity highest cosine to a real training identity."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(series), figsize=(4.5 * len(series), 3.2), squeeze=False)
    bins = np.linspace(-1, 1, 81)
    for ax, (m, per) in zip(axes[0], series.items()):
        for label, v in per.items():
            ax.hist(v, bins=bins, alpha=0.6, density=True, label=f"{label} ({len(v)})")
        ax.axvline(thresholds[m], color="k", ls="--", lw=1, label=f"same-person threshold {thresholds[m]:.2f}")
        ax.set_title(f"highest cosine to a real training identity - {m}", fontsize=9); ax.set_xlabel("cosine")
        ax.legend(fontsize=7)
    _save(fig, path)


def sample_grid(images: np.ndarray, identity: np.ndarray, rows: int, cols: int, tile: int = 64):
    """The first `rows` identities, up to `cols` images each, one row per identity (a PIL image)."""
    from PIL import Image
    ids = list(dict.fromkeys(identity.tolist()))[:rows]
    grid = Image.new("RGB", (cols * tile, len(ids) * tile), (255, 255, 255))
    for r, i in enumerate(ids):
        for c, im in enumerate(images[identity == i][:cols]):
            grid.paste(Image.fromarray(im).resize((tile, tile), Image.BICUBIC), (c * tile, r * tile))
    return grid
