"""Command line: `python -m flows <stage> [--params FILE]`, or `synthface <stage>` once installed.

Stages: fetch-data, align, train-encoder, train-generator, sample, package, train-fr-real, train-fr,
train-fr-matched, evaluate.
`python -m flows params --dry-run` prints the validated configuration and its hash.
`python -m flows build-bin --pairs pairs.txt --images DIR --out lfw.bin [--folds 1 2 ..]` writes an
insightface .bin from LFW-style pairs and already aligned images laid out as DIR/<name>/<name>_0001.jpg.
`python -m flows release --version X.Y.Z | --bump patch [--remote NAME] [--no-push-tags]` publishes a
release (flows/release.py); `python -m flows export --format recordio|imagefolder --out DIR` exports the
packaged dataset (flows/export.py). `python -m flows serve [--cron "0 2 * * *"]` runs the scheduled release
(pull inputs -> dvc repro -> dvc push -> tag, flows/scheduled.py) from this process.
`python -m flows sample --runner dask --address tcp://host:8786` renders on an existing Dask cluster.
`python -m flows repro [dvc repro args]` is `dvc repro` with one Prefect server for all its stage processes.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys

STAGES = {
    "align": ("flows.align", "align_flow"),
    "train-encoder": ("flows.train_encoder", "train_encoder_flow"),
    "train-generator": ("flows.train_generator", "train_generator_flow"),
    "sample": ("flows.sample", "sample_flow"),
    "package": ("flows.package", "package_flow"),
    "train-fr-real": ("flows.train_fr", "train_fr_real_flow"),
    "train-fr": ("flows.train_fr", "train_fr_flow"),
    "train-fr-matched": ("flows.train_fr_matched", "train_fr_matched_flow"),
    "evaluate": ("flows.evaluate", "evaluate_flow"),
}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["repro"]:  # dvc repro's own arguments pass through untouched
        from .server import repro
        return repro(argv[1:])
    ap = argparse.ArgumentParser(prog="synthface", description=__doc__.splitlines()[0])
    ap.add_argument("stage", choices=["fetch-data", "params", "build-bin", "release", "export", "serve", *STAGES])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--dry-run", action="store_true", help="print the resolved configuration and its hash, run nothing")
    ap.add_argument("--pairs", help="build-bin: LFW's pairs.txt, or a file of '<path a>\\t<path b>\\t<1|0>' lines")
    ap.add_argument("--images", help="build-bin: folder of aligned images (LFW's <name>/<name>_<idx:04d>.jpg, or the paths' root)")
    ap.add_argument("--out", help="build-bin: the .bin to write; export: the output folder")
    ap.add_argument("--folds", type=int, nargs="*", help="build-bin: only these pairs.txt folds (1-based)")
    ap.add_argument("--version", help="release: the semantic version to tag (vX.Y.Z)")
    ap.add_argument("--bump", choices=["major", "minor", "patch"], default="patch", help="release: without --version")
    ap.add_argument("--remote", help="release: the DVC remote (default: the configured default remote)")
    ap.add_argument("--no-push-tags", action="store_true", help="release: keep the tag local")
    ap.add_argument("--format", choices=["recordio", "imagefolder"], help="export: the output format")
    ap.add_argument("--dataset", default="artifacts/dataset", help="export: the packaged dataset folder")
    ap.add_argument("--cron", help="serve: the release schedule (default nightly, 0 2 * * * UTC)")
    ap.add_argument("--runner", choices=["threads", "dask"], help="sample: where blocks run (default: params execution.runner)")
    ap.add_argument("--address", help="sample: an existing Dask scheduler (default: execution.address)")
    a = ap.parse_args(argv)
    try:
        return dispatch(a)
    except OSError as e:  # a full disk, a read-only or forbidden folder: one clear line, no traceback
        print(f"synthface {a.stage}: {os_error_message(e)}", file=sys.stderr)
        return 2


def os_error_message(e: OSError) -> str:
    import errno
    where = f" ({e.filename})" if e.filename else ""
    what = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
            errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
            errno.EROFS: "read-only file system"}.get(e.errno)
    if what is None:
        return str(e)
    return (f"{what}{where}. Nothing partial was left: outputs are written under temporary names and renamed "
            "only when complete, and finished work is cached - fix it and run again.")


def dispatch(a) -> int:
    if a.stage == "serve":
        from .scheduled import CRON, serve
        serve(a.cron or CRON)
        return 0
    if a.stage == "build-bin":
        return build_bin_cli(a)
    if a.stage in ("release", "export"):
        return tool_cli(a)
    from tasks.io import InputError
    from tasks.lfw import DataError
    from tasks.params import ParamsError, load_params, params_hash
    try:
        p = load_params(a.params)
        if a.dry_run or a.stage == "params":
            print(json.dumps({"params_hash": params_hash(p), "params": p}, indent=2))
            return 0
        from . import ROOT
        if a.stage == "fetch-data":
            from tasks.lfw import obtain
            print(f"data ready in {obtain(p['data'], ROOT)}")
            return 0
        if a.stage == "align":  # fail in one line before any flow starts
            from tasks.interchange import source_members
            from tasks.lfw import verify
            verify(p["data"], ROOT / p["data"]["dir"])
            if p["align"]["train_source"]:  # an import with nothing to train on (the flow lists it again)
                source_members(p["align"]["train_source"], ROOT, p["align"])
        mod, fn = STAGES[a.stage]
        where = {k: v for k, v in (("runner", a.runner), ("address", a.address)) if v}
        if where and a.stage != "sample":
            print(f"synthface {a.stage}: --runner and --address apply to sample", file=sys.stderr)
            return 2
        getattr(importlib.import_module(mod), fn)(a.params, **where)
    except (ParamsError, DataError, InputError, FileNotFoundError) as e:
        print(f"synthface {a.stage}: {e}", file=sys.stderr)
        return 2
    return 0


def tool_cli(a) -> int:
    from pathlib import Path
    try:
        if a.stage == "release":
            from .release import ReleaseError, release_flow
            try:
                print(json.dumps(release_flow(a.version, a.bump, a.remote, not a.no_push_tags), indent=2))
            except ReleaseError as e:
                print(f"synthface release: {e}", file=sys.stderr)
                return 2
            return 0
        from .export import export
        if not (a.format and a.out):
            print("synthface export: --format and --out are required", file=sys.stderr)
            return 2
        print(json.dumps(export(a.format, Path(a.out), Path(a.dataset))))
    except (FileNotFoundError, ValueError) as e:
        print(f"synthface {a.stage}: {e}", file=sys.stderr)
        return 2
    return 0


def build_bin_cli(a) -> int:
    """--pairs: LFW's pairs.txt (images at <name>/<name>_<idx:04d>.jpg under --images) or a pairs file of
    paths relative to --images ('<a>\t<b>\t<1|0>', tasks.lfw.parse_pair_list); --folds: LFW's folds only."""
    from pathlib import Path

    from tasks.benchmarks import build_bin, write_bin
    from tasks.io import InputError
    from tasks.lfw import parse_pair_list, parse_pairs
    if not (a.pairs and a.images and a.out):
        print("synthface build-bin: --pairs, --images and --out are required", file=sys.stderr)
        return 2
    rel = lambda name, idx: f"{name}/{name}_{idx:04d}.jpg"  # noqa: E731
    try:
        first = next((ln for ln in Path(a.pairs).read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()), "")
        if len(first.split()) == 2 and all(x.isdigit() for x in first.split()):  # LFW's header: '<folds> <n>'
            pairs = [(rel(q.name_a, q.idx_a), rel(q.name_b, q.idx_b), q.issame)
                     for q in parse_pairs(Path(a.pairs)) if not a.folds or q.fold in a.folds]
        elif a.folds:
            raise InputError(f"{a.pairs}: --folds applies to LFW's pairs.txt, not to a pairs file of paths")
        else:
            pairs = parse_pair_list(Path(a.pairs))
    except (InputError, FileNotFoundError) as e:
        print(f"synthface build-bin: {e}", file=sys.stderr)
        return 2
    keys = {k for pa, pb, _ in pairs for k in (pa, pb)}
    missing = sorted(k for k in keys if not (Path(a.images) / k).is_file())
    if missing:
        print(f"synthface build-bin: {len(missing)} images missing under {a.images}, e.g. {missing[:3]}", file=sys.stderr)
        return 2
    images = {k: (Path(a.images) / k).read_bytes() for k in keys}
    bins, issame = build_bin(pairs, images)
    write_bin(a.out, bins, issame)
    print(f"wrote {a.out}: {len(issame)} pairs ({sum(issame)} matched)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
