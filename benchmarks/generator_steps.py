"""How many training steps before the generator follows its identity condition? Condition adherence vs steps.

    python benchmarks/generator_steps.py --artifacts /work/main/artifacts            # CemiFace, ~40 min on 2 cores
    python benchmarks/generator_steps.py --method id3 --milestones 450 900 --artifacts DIR

Trains the generator of --method with the project's params.yaml (generator section) on the align stage's
training shards and the encoder of --artifacts, through the real `tasks.train_generator.train_generator`,
resuming from its own checkpoint between milestones (one run, scored as it goes). At each milestone the
EMA weights are scored as benchmarks/condition_adherence.py scores a generator: unguided renders against
the real and anchor embeddings they were conditioned on. This is what sets generator.cemiface.steps.
Writes benchmarks/results/generator_steps_<method>.json; the checkpoints stay in --work (a temp folder).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import ROOT, Bench, common_args, wait_until_idle  # noqa: E402
from benchmarks.condition_adherence import measure  # noqa: E402


def _scoring_folder(src: Path, work: Path) -> Path:
    """work/art: the trained pipeline beside links to src's encoder, real_stats and anchors (what `measure` reads)."""
    art = work / "art"
    (art / "generator").mkdir(parents=True, exist_ok=True)
    (art / "sample").mkdir(exist_ok=True)
    for rel in ("encoder", "generator/real_stats.npz", "sample/anchors.npy"):
        if (src / rel).exists() and not (art / rel).exists():
            (art / rel).symlink_to((src / rel).resolve())
    return art


def run(src: Path, p: dict, milestones: list[int], work: Path, identities: int = 8, images: int = 4,
        ms=(0.0, 1.0), device: str = "cpu", log=print) -> dict:
    import pandas as pd

    from tasks.encoder import load_encoder
    from tasks.train_generator import attribute_conditions, real_embeddings, train_generator
    enc = load_encoder(src / "encoder", device)
    m = pd.read_parquet(src / "align" / "manifest.parquet")
    shards = sorted(src / "align" / s for s in m[m["split"] == "train"]["shard"].unique())
    keys, _, embs = real_embeddings(enc, shards, p["resolution"], device)
    pool = pd.read_parquet(src / "align" / "attributes.parquet")  # ID3's pose conditions; its length sizes an epoch
    attr_of = attribute_conditions(pool) if p["method"] == "id3" else {}
    art = _scoring_folder(src, work)
    rows = []
    for n in sorted(milestones):
        q = dict(p, steps=n, cemiface=dict(p["cemiface"], steps=n))  # n under either method
        t0 = time.time()
        pipe, stats = train_generator(shards, dict(zip(keys, embs)), attr_of, len(pool), enc, q, work / "ckpt", device, log)
        seconds = time.time() - t0
        pipe.save_pretrained(art / "generator" / "pipeline")
        scored = measure(art, identities, images, ms, device=device)
        rows.append({"steps": n, "train_seconds_since_last": round(seconds, 1), "last_logged": stats["history"][-1],
                     "runs": scored["runs"]})
        first = next(iter(scored["runs"].items()))
        log(f"{n} steps: {first[0]} cos to condition {first[1]['cos_to_condition_mean']:.3f}, "
            f"centre pairwise {first[1]['centre_pairwise_cos_mean']:.3f}")
    return {"method": p["method"], "identities": identities, "images_per_identity": images, "rows": rows}


def main(argv=None) -> int:
    ap = common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    ap.add_argument("--artifacts", type=Path, default=ROOT / "artifacts", help="a project's artifacts (align, encoder)")
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument("--method", default="cemiface", choices=["id3", "cemiface"])
    ap.add_argument("--milestones", type=int, nargs="+", default=[450, 900, 1500, 2250, 3000])
    ap.add_argument("--identities", type=int, default=8)
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--m", type=float, nargs="+", default=[0.0, 1.0], help="CemiFace similarities to render at")
    ap.add_argument("--work", type=Path, default=None, help="checkpoints and the scored pipeline (default: a temp folder)")
    a = ap.parse_args(argv)
    if not a.no_wait:
        wait_until_idle(a.max_load)
    p = yaml.safe_load(a.params.read_text())["generator"] | {"method": a.method}
    b = Bench(f"generator_steps_{a.method}", a.device, {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()})
    with tempfile.TemporaryDirectory() as tmp:
        b.result.update(run(a.artifacts, p, a.milestones, a.work or Path(tmp), a.identities, a.images, a.m, a.device))
    print(b.write(a.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
