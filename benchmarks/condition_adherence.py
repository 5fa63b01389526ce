"""Does the trained generator follow its identity condition? Unguided renders scored by the project's encoder.

    python benchmarks/condition_adherence.py --artifacts /work/main/artifacts          # ~1 min on 2 cores
    python benchmarks/condition_adherence.py --artifacts DIR --m 0 0.5 1 --identities 6 --images 4
    python benchmarks/condition_adherence.py --artifacts DIR --identities 32 --images 8 --judge --name id3   # ~4 min

For --identities inquiry embeddings of each source (the sample stage's anchors when artifacts/sample has them,
and one real training face per identity from generator/real_stats.npz), renders --images images each with no
identity guidance (id_weight 0: the model, not the sampler's steering), and records the mean encoder cosine
between a render and the embedding it was conditioned on, and the mean pairwise cosine of the identities'
render centres beside that of their conditions. A generator that learned its condition gives a clearly
positive first figure (CemiFace: rising with m) and centres as far apart as their conditions; one that ignores
it gives about 0 and centres close together (one look-alike face). CemiFace renders at every --m; ID3 with
frontal pose and the centre age (attributes all 0). ID-Booth is conditioned per identity by LoRAs, not by embeddings: refused.
With --judge each run also gets the independent judge's view (benchmarks/generator_recipe.score: MTCNN's
detection rate and the dlib judge's same- and different-identity pair acceptance, centred on the align stage's
real faces): if it cannot tell the real identities' renders apart either, the generator does not follow its
condition at all, whatever the anchors.
Writes benchmarks/results/condition_adherence[_NAME].json.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import ROOT, Bench, common_args, wait_until_idle  # noqa: E402
from benchmarks.generator_recipe import judge_reference, score, train_faces  # noqa: E402
from tasks.identity import centres  # noqa: E402


def _mean_offdiag(e: np.ndarray) -> float:
    g = e @ e.T
    return float((g.sum() - np.trace(g)) / (len(e) * (len(e) - 1)))


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def measure(art: Path, identities: int = 6, images: int = 4, ms=(0.0, 0.5, 1.0), steps: int = 20,
            device: str = "cpu", judge_threshold: float | None = None) -> dict:
    import torch
    from torch.nn import functional as F

    from models import load_pipeline
    from models.id3 import to_output
    from models.identities import ATTRIBUTES
    from tasks.encoder import load_encoder
    pipe = load_pipeline(art / "generator" / "pipeline").to(device)
    if pipe.METHOD not in ("id3", "cemiface"):
        raise ValueError(f"{pipe.METHOD}: not conditioned on identity embeddings (ID-Booth: one LoRA per identity)")
    enc = load_encoder(art / "encoder", device)
    real = np.load(art / "generator" / "real_stats.npz")
    first = np.unique(real["labels"], return_index=True)[1][:identities]  # one face of each of the first identities
    sources = {"real": real["embeddings"][first]}
    if (art / "sample" / "anchors.npy").is_file():
        sources["anchors"] = np.load(art / "sample" / "anchors.npy")[:identities]
    out = {"method": pipe.METHOD, "identities": identities, "images_per_identity": images, "steps": steps, "runs": {}}
    if judge_threshold is not None:  # the judge's view: the package stage's scoring of renders
        from tasks.align import MTCNNDetector
        from tasks.judge import DlibJudge
        judge, det = DlibJudge(), MTCNNDetector("cpu")
        reference = judge_reference(judge, train_faces(art)[0])
        out["judge_threshold"] = judge_threshold
    for name, w in sources.items():
        w = _unit(np.asarray(w, np.float32))
        emb = np.repeat(w, images, axis=0)
        who = np.repeat(np.arange(len(w)), images)
        for m in (ms if pipe.METHOD == "cemiface" else [None]):
            cond = m if m is not None else torch.zeros(len(emb), len(ATTRIBUTES))  # CemiFace's m, or ID3's pose and age
            x = pipe(torch.from_numpy(emb), cond, list(range(len(emb))), num_inference_steps=steps, sampler="ddim")
            with torch.no_grad():
                e = F.normalize(enc(x.to(device)).float(), dim=1).cpu().numpy()
            _, c = centres(e, who)  # the identities' normalised render centres
            run = out["runs"][name if m is None else f"{name}, m={m:g}"] = {
                "cos_to_condition_mean": float((e * emb).sum(1).mean()),
                "centre_pairwise_cos_mean": _mean_offdiag(c),
                "condition_pairwise_cos_mean": _mean_offdiag(w)}
            if judge_threshold is not None:
                run.update(score(list(to_output(x, "np")), who.tolist(), judge, det, reference, judge_threshold))
    return out


def main(argv=None) -> int:
    ap = common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    ap.add_argument("--artifacts", type=Path, default=ROOT / "artifacts", help="a project's artifacts folder (generator, encoder)")
    ap.add_argument("--identities", type=int, default=6)
    ap.add_argument("--images", type=int, default=4, help="renders per inquiry embedding")
    ap.add_argument("--m", type=float, nargs="+", default=[0.0, 0.5, 1.0], help="CemiFace similarities to render at")
    ap.add_argument("--steps", type=int, default=20, help="DDIM steps")
    ap.add_argument("--judge", action="store_true", help="also score the renders by MTCNN and the dlib judge (needs align/)")
    ap.add_argument("--threshold", type=float, default=0.235, help="the judge's same-person cosine (centred)")
    ap.add_argument("--name", default="", help="result file suffix: condition_adherence_NAME.json")
    a = ap.parse_args(argv)
    if not a.no_wait:
        wait_until_idle(a.max_load)
    b = Bench("condition_adherence" + (f"_{a.name}" if a.name else ""), a.device, {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()})
    b.result.update(measure(a.artifacts, a.identities, a.images, a.m, a.steps, a.device, a.threshold if a.judge else None))
    print(b.write(a.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
