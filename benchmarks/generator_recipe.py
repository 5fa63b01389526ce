"""Does the generator draw faces, and distinct ones? MTCNN and the judge on its renders, against training steps.

    python benchmarks/generator_recipe.py --artifacts artifacts --milestones 500 800 --no-wait    # ~20 min, 2 cores
    python benchmarks/generator_recipe.py --name eps --set prediction_type=epsilon --set snr_gamma=null
    python benchmarks/generator_recipe.py --sample-set guidance_scale=2.5 --sample-set id_weight=0

Trains ID3 with params.yaml's generator section (each --set KEY=YAML overrides one key) on the align stage's
training shards and the encoder of --artifacts, through `tasks.train_generator.train_generator`, resuming from
its own checkpoint between milestones. At each milestone it renders --identities identities x 8 images as the
sample stage plans them (params' [sample] with 4 embeddings x 2 images, each --sample-set overriding a key) and
records: the share of renders MTCNN finds a face in (`tasks.quality.face_poses`, as quality.json counts them),
the dlib judge's share of same-identity and of different-identity render pairs it calls the same person at
--threshold (centred on --artifacts' real faces; tasks/judge.py), and renders per second.
Writes benchmarks/results/generator_recipe_<name>.json and a grid PNG per milestone beside it.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import ROOT, Bench, common_args, wait_until_idle  # noqa: E402


def overrides(pairs: list[str]) -> dict:
    """KEY=YAML pairs -> {key: value}; one-line error naming a malformed pair."""
    out = {}
    for kv in pairs:
        key, sep, val = kv.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set/--sample-set {kv!r}: expected KEY=VALUE")
        out[key] = yaml.safe_load(val)
    return out


def score(images: list, identity: list[int], judge, detector, reference: np.ndarray, threshold: float) -> dict:
    from PIL import Image

    from tasks.judge import centred_unit
    from tasks.quality import face_poses
    big = [np.asarray(Image.fromarray(a).resize((112, 112), Image.BICUBIC)) for a in images]
    u = centred_unit(judge.describe_all(big), reference)
    iu = np.triu_indices(len(big), 1)
    same, c = (np.asarray(identity)[:, None] == np.asarray(identity)[None, :])[iu], (u @ u.T)[iu]
    found = ~np.isnan(face_poses(np.stack(big), detector)).any(1)
    return {"faces_found": float(found.mean()), "judge_same_identity_accepted": float((c[same] >= threshold).mean()),
            "judge_different_identity_accepted": float((c[~same] >= threshold).mean())}


def train_faces(art: Path) -> tuple[list[np.ndarray], np.ndarray]:
    """Every aligned training face of a project's align stage (uint8 HWC) and its identity label, in shard order."""
    import pandas as pd

    from tasks.shards import iter_images
    m = pd.read_parquet(art / "align" / "manifest.parquet")
    faces, labels = [], []
    for _, ims, cls in iter_images([art / "align" / x for x in sorted(m[m["split"] == "train"]["shard"].unique())]):
        faces += list(ims)
        labels += cls.tolist()
    return faces, np.asarray(labels)


def judge_reference(judge, faces: list[np.ndarray], n: int = 400) -> np.ndarray:
    """The mean raw dlib descriptor of the first n real faces: the centring of tasks/judge.py."""
    return judge.describe_all(faces[:n]).mean(0)


def run(src: Path, p: dict, s: dict, milestones: list[int], work: Path, out: Path, name: str, identities: int,
        threshold: float, log=print) -> dict:
    import pandas as pd
    from PIL import Image

    from models.identities import attribute_pool
    from tasks.align import MTCNNDetector
    from tasks.encoder import load_encoder
    from tasks.judge import DlibJudge
    from tasks.sample import plan_identities, sampling
    from tasks.train_generator import attribute_conditions, real_embeddings, train_generator
    enc = load_encoder(src / "encoder", "cpu")
    m = pd.read_parquet(src / "align" / "manifest.parquet")
    shards = sorted(src / "align" / x for x in m[m["split"] == "train"]["shard"].unique())
    keys, labels, embs = real_embeddings(enc, shards, p["resolution"], "cpu")
    table = pd.read_parquet(src / "align" / "attributes.parquet")
    judge, det = DlibJudge(), MTCNNDetector("cpu")
    reference = judge_reference(judge, train_faces(src)[0])
    s = dict(s, num_identities=identities, embeddings_per_identity=4, images_per_embedding=2)
    plan = plan_identities({"embeddings": embs, "labels": labels}, s, attribute_pool(table), "id3")
    rows = []
    for n in sorted(milestones):
        t0 = time.time()
        pipe, stats = train_generator(shards, dict(zip(keys, embs)), attribute_conditions(table), len(table), enc,
                                      dict(p, steps=n), work / "ckpt", "cpu", log)
        trained, t0 = time.time() - t0, time.time()
        kn = sampling(s, "id3")
        imgs = pipe.render_rows(plan["embeddings"], plan["anchors"], plan["rows"], 64, output_type="np",
                                encoder=enc if kn["id_weight"] else None, **kn)
        rendered = time.time() - t0
        row = {"steps": n, "train_seconds_since_last": round(trained, 1), "train_images_per_s": round(stats["images_per_s"], 2),
               "renders_per_s": round(len(imgs) / rendered, 2),
               **score(list(imgs), [r["identity"] for r in plan["rows"]], judge, det, reference, threshold)}
        side = 8 * imgs[0].shape[0]
        grid = np.concatenate([np.concatenate(list(imgs[i:i + 8]), 1) for i in range(0, 64, 8)], 0)[:side]
        Image.fromarray(grid).save(out / f"generator_recipe_{name}_{n}.png")
        rows.append(row)
        log(f"{n} steps: {row}")
    return {"generator": p, "sample": kn, "identities": identities, "images_per_identity": 8, "threshold": threshold, "rows": rows}


def main(argv=None) -> int:
    ap = common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    ap.add_argument("--artifacts", type=Path, default=ROOT / "artifacts", help="a project's artifacts (align, encoder)")
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument("--name", default="demo", help="result file suffix")
    ap.add_argument("--set", action="append", default=[], help="generator KEY=YAML override")
    ap.add_argument("--sample-set", action="append", default=[], help="sample KEY=YAML override")
    ap.add_argument("--milestones", type=int, nargs="+", default=[500, 800])
    ap.add_argument("--identities", type=int, default=32)
    ap.add_argument("--threshold", type=float, default=0.235, help="the judge's same-person cosine (centred)")
    ap.add_argument("--work", type=Path, default=None, help="checkpoints (default: a temp folder)")
    a = ap.parse_args(argv)
    if not a.no_wait:
        wait_until_idle(a.max_load)
    params = yaml.safe_load(a.params.read_text())
    p = params["generator"] | {"method": "id3"} | overrides(a.set)
    s = params["sample"] | overrides(a.sample_set)
    b = Bench(f"generator_recipe_{a.name}", a.device, {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()})
    a.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        b.result.update(run(a.artifacts, p, s, a.milestones, a.work or Path(tmp), a.out, a.name, a.identities, a.threshold))
    print(b.write(a.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
