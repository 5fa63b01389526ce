"""Command line: `python -m flows <stage> [--params FILE]`, or `synthface <stage>` once installed.

Stages: fetch-data, align, train-encoder, train-generator, sample, package, train-fr, evaluate.
`python -m flows params --dry-run` prints the validated configuration and its hash.
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
    "train-fr": ("flows.train_fr", "train_fr_flow"),
    "evaluate": ("flows.evaluate", "evaluate_flow"),
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="synthface", description=__doc__.splitlines()[0])
    ap.add_argument("stage", choices=["fetch-data", "params", *STAGES])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--dry-run", action="store_true", help="print the resolved configuration and its hash, run nothing")
    a = ap.parse_args(argv)
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
            from tasks.lfw import verify
            verify(p["data"], ROOT / p["data"]["dir"])
        mod, fn = STAGES[a.stage]
        getattr(importlib.import_module(mod), fn)(a.params)
    except (ParamsError, DataError, FileNotFoundError) as e:
        print(f"synthface {a.stage}: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
