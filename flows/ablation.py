"""Tables over DVC experiments, one experiment per variant and one row each: the ID3 ablation (issue 3 / the
paper's ablations) and the generator-method comparison (issue 6).

    python -m flows.ablation --run     # dvc exp run for each variant below, then the table
    python -m flows.ablation --run --only id3-beta0   # one variant
    python -m flows.ablation           # the table from experiments already run (and the workspace)
    python -m flows.ablation --study methods --run    # ID3 (the workspace) vs CemiFace vs ID-Booth, one FR recipe

Ablation variants: (a) full ID3 = the committed params (the workspace row); (b) no identity loss term
(generator.kappa_scale=0); (c) no reversed term (sample.beta=0); (d) random anchors
(sample.anchors=random). Method variants: the committed params (ID3), generator.method=cemiface and
generator.method=idbooth (an augmented real set, so its row is not a synthetic-only one).
Each experiment reruns only the stages its override reaches. Rows read each experiment's
metrics/quality.json, metrics/report.json and params.yaml from its git ref (refs/exps/...), so the table
never mixes figures from different runs; a row trained under another [train_fr] recipe than the first
row's is flagged. Writes metrics/<study>.json and metrics/<study>.md.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tasks.io import atomic_path, write_json

from . import ROOT

from tasks.params import params_hash, read_yaml

VARIANTS = {
    "id3-full": ("(a) full ID3", {}),
    "id3-no-id-loss": ("(b) no identity loss term", {"generator.kappa_scale": 0}),
    "id3-beta0": ("(c) beta = 0 (no reversed term)", {"sample.beta": 0}),
    "id3-random-anchors": ("(d) random anchors", {"sample.anchors": "random"}),
}
METHODS = {
    "method-id3": ("ID3", {}),
    "method-cemiface": ("CemiFace", {"generator.method": "cemiface"}),
    "method-idbooth": ("ID-Booth (real + generated)", {"generator.method": "idbooth"}),
}
STUDIES = {"ablation": VARIANTS, "methods": METHODS}


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout


def experiment_refs() -> dict[str, str]:
    """name -> newest git ref of each named DVC experiment."""
    out = _git("for-each-ref", "--sort=-committerdate", "--format=%(refname)", "refs/exps")
    refs: dict[str, str] = {}
    for ref in out.split():
        if not ref.startswith("refs/exps/exec/"):  # dvc's in-flight bookkeeping, not an experiment
            refs.setdefault(ref.rsplit("/", 1)[-1], ref)
    return refs


def read_metrics(ref: str | None) -> tuple[dict, dict, dict]:
    """(report.json, quality.json, params.yaml) at a git ref, or in the workspace when ref is None."""
    def text(path):
        return (ROOT / path).read_text() if ref is None else _git("show", f"{ref}:{path}")
    return (json.loads(text("metrics/report.json")), json.loads(text("metrics/quality.json")),
            read_yaml(text("params.yaml"), f"{ref or 'workspace'}:params.yaml"))


def row(label: str, overrides: dict, report: dict, quality: dict, params: dict) -> dict:
    # the generated set's row: "synthetic (<method>)", or ID-Booth's "real + generated (idbooth)"
    name, synth = next((k, v) for k, v in report.items() if not k.startswith("real ("))
    held = synth["benchmarks"]["lfw_heldout"]
    judge = quality["synthetic"]["judge (dlib)"]
    enc = quality["synthetic"]["encoder"]
    return {"variant": label, "overrides": overrides, "training_set": name, "method": params["generator"]["method"],
            "fr_recipe": params_hash(params["train_fr"])[:12],
            "benchmarks": {b: r["accuracy"] for b, r in synth["benchmarks"].items()},
            "average_accuracy": synth["average_accuracy"],
            "lfw_heldout_accuracy": held["accuracy"], "lfw_heldout_accuracy_std": held["accuracy_std"],
            "judge_consistency_mean_cos": judge["consistency_mean_cos_to_centre"],
            "judge_consistency_frac": judge["consistency_frac_above_threshold"],
            "judge_inter_pairs_same_person": judge["inter_pairs_same_person"],
            "judge_unique_identities": judge["unique_identities_at_threshold"], "identities": judge["identities"],
            "encoder_consistency_mean_cos": enc["consistency_mean_cos_to_centre"],
            "encoder_unique_identities": enc["unique_identities_at_threshold"],
            "faces_found": quality["synthetic"]["pose"]["faces_found"],
            "privacy_max_cos_judge": judge["privacy_max_cos_to_real_max"]}


def markdown(rows: list[dict]) -> str:
    head = ("| variant | held-out LFW acc | judge: mean cos to centre | judge: images above threshold to centre | "
            "judge: different ids passing as same | judge: unique ids | encoder: mean cos to centre | faces found |")
    lines = ["# ID3 ablation (demo scale; `python -m flows.ablation --run`)", "",
             "Identity consistency by the independent dlib judge (centred descriptors, threshold calibrated on held-out "
             "LFW pairs); accuracy of the fixed FR recipe trained on each synthetic set, on the held-out LFW pairs.", "",
             head, "|" + "---|" * 8]
    for r in rows:
        lines.append(f"| {r['variant']} | {100 * r['lfw_heldout_accuracy']:.2f} +- {100 * r['lfw_heldout_accuracy_std']:.2f} % | "
                     f"{r['judge_consistency_mean_cos']:.3f} | {100 * r['judge_consistency_frac']:.1f} % | "
                     f"{100 * r['judge_inter_pairs_same_person']:.1f} % | {r['judge_unique_identities']} / {r['identities']} | "
                     f"{r['encoder_consistency_mean_cos']:.3f} | {100 * (r['faces_found'] or 0):.1f} % |")
    lines += ["", "Overrides: " + "; ".join(f"{r['variant']}: {r['overrides'] or 'none (params.yaml)'}" for r in rows), ""]
    return "\n".join(lines)


def methods_markdown(rows: list[dict], real: dict | None) -> str:
    """One row per generator method (and the real training split for reference): every benchmark of the report."""
    bench = list(rows[0]["benchmarks"]) if rows else []
    lines = ["# Generator methods (demo scale; `python -m flows.ablation --study methods --run`)", "",
             "The same FR recipe ([train_fr], hash in the last column) trained on each method's packaged dataset; "
             "accuracy on each benchmark of the report (never used to choose checkpoints). Identity consistency and "
             "uniqueness by the independent dlib judge.", "",
             "| training data | " + " | ".join(bench) + " | average | judge: mean cos to centre | judge: unique ids | "
             "judge: max cos to a real identity | faces found | FR recipe |",
             "|" + "---|" * (len(bench) + 7)]
    if real is not None:
        lines.append(f"| {real['name']} | " + " | ".join(f"{100 * real['benchmarks'][b]['accuracy']:.2f} %" for b in bench)
                     + f" | {100 * real['average_accuracy']:.2f} % | | | | | |")
    for r in rows:
        flag = "" if r["fr_recipe"] == rows[0]["fr_recipe"] else " (another recipe: not comparable)"
        lines.append(f"| {r['training_set']} | " + " | ".join(f"{100 * r['benchmarks'][b]:.2f} %" for b in bench)
                     + f" | {100 * r['average_accuracy']:.2f} % | {r['judge_consistency_mean_cos']:.3f} | "
                     f"{r['judge_unique_identities']} / {r['identities']} | {r['privacy_max_cos_judge']:.3f} | "
                     f"{100 * (r['faces_found'] or 0):.1f} % | {r['fr_recipe']}{flag} |")
    return "\n".join(lines + [""])


def run_variants(names: list[str], variants: dict = VARIANTS) -> None:
    """`dvc exp run` each variant from the committed params (a name is replaced if it exists)."""
    existing = experiment_refs()
    for name in names:
        _, overrides = variants[name]
        if not overrides:
            continue  # (a) is the committed workspace
        if name in existing:
            subprocess.run(["dvc", "exp", "remove", name], cwd=ROOT, check=True)
        cmd = ["dvc", "exp", "run", "-n", name] + [a for k, v in overrides.items() for a in ("-S", f"{k}={v}")]
        subprocess.run(cmd, cwd=ROOT, check=True)
        # back to the committed params and outputs before the next variant (metrics and plots are
        # git-tracked, uncached DVC outputs: git restores them, dvc checkout the cached artifacts)
        # (dvc exp run leaves params.yaml staged: unstage first, or checkout would restore the staged copy)
        subprocess.run(["git", "reset", "-q", "--", "params.yaml", "dvc.lock", "metrics", "plots"], cwd=ROOT, check=True)
        subprocess.run(["git", "checkout", "--", "params.yaml", "dvc.lock", "metrics", "plots"], cwd=ROOT, check=True)
        subprocess.run(["dvc", "checkout", "--quiet"], cwd=ROOT, check=True)


def ablation(run: bool = False, only: list[str] | None = None, study: str = "ablation") -> list[dict]:
    variants = STUDIES[study]
    if run:  # sampling-only variants first; the one that retrains the generator last
        run_variants(only or sorted(variants, key=lambda n: "generator." in "".join(variants[n][1])), variants)
    refs = experiment_refs()
    rows, missing = [], []
    for name, (label, overrides) in variants.items():
        if not overrides:
            rows.append(row(label, overrides, *read_metrics(None)))
        elif name in refs:
            rows.append(row(label, overrides, *read_metrics(refs[name])))
        else:
            missing.append(name)
    out = ROOT / "metrics"
    real = next(({"name": k, **v} for k, v in read_metrics(None)[0].items() if k.startswith("real (")), None)
    write_json(out / f"{study}.json", {"rows": rows, "missing": missing} | ({"real": real} if study == "methods" else {}))
    text = methods_markdown(rows, real) if study == "methods" else markdown(rows)
    cmd = f"python -m flows.ablation{'' if study == 'ablation' else ' --study ' + study} --run --only {' '.join(missing)}"
    with atomic_path(out / f"{study}.md") as tmp:
        Path(tmp).write_text(text + (f"\nNot run yet: {', '.join(missing)} (`{cmd}`).\n" if missing else ""))
    return rows


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser(description="the ID3 ablation or method-comparison table from DVC experiments")
    ap.add_argument("--study", choices=list(STUDIES), default="ablation")
    ap.add_argument("--run", action="store_true", help="run the variants with dvc exp run first (commit the baseline first)")
    ap.add_argument("--only", nargs="*", choices=[n for v in STUDIES.values() for n in v],
                    help="with --run: just these variants")
    a = ap.parse_args()
    if a.only and set(a.only) - set(STUDIES[a.study]):
        ap.error(f"--only: not variants of --study {a.study}: {sorted(set(a.only) - set(STUDIES[a.study]))}")
    for r in ablation(a.run, a.only, a.study):
        print(json.dumps(r))
