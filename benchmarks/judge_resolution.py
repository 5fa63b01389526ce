"""How well do the independent judge and the face detector see real faces at lower resolutions? Chooses the
generator's resolution: a synthetic set can only be as distinct, by the judge, as real faces are at its size.

    python benchmarks/judge_resolution.py --artifacts artifacts --no-wait     # ~5 min on 2 cores

Takes --per images of each of the first --identities real training identities (artifacts/align shards),
downsamples each 112 px aligned face to every --sizes resolution (Lanczos) and back to 112 px (bicubic, as
the package and evaluate stages upsample renders), and records for each size: the dlib judge's share of
same-identity and of different-identity pairs it accepts at --threshold (the demo's calibrated judge
threshold on centred cosines; the reference mean is the 112 px faces'), their mean cosines, and the share of
faces MTCNN re-detects at score 0.9 (tasks/quality.face_poses, as quality.json counts synthetic faces).
Writes benchmarks/results/judge_resolution.json.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import ROOT, Bench, common_args, wait_until_idle  # noqa: E402


def resize(a: np.ndarray, size: int, filt) -> np.ndarray:
    from PIL import Image
    return a if a.shape[0] == size else np.asarray(Image.fromarray(a).resize((size, size), filt))


def measure(art: Path, identities: int, per: int, sizes: list[int], threshold: float) -> dict:
    from PIL import Image

    from tasks.align import MTCNNDetector
    from tasks.judge import DlibJudge, centred_unit
    from tasks.quality import face_poses
    from tasks.shards import decode_image, read_tar
    faces, labels = [], []
    for shard in sorted((art / "align").glob("faces-train-*.tar")):
        for s in read_tar(shard):
            faces.append(decode_image(s["jpg"])); labels.append(int(s["cls"]))
    labels = np.asarray(labels)
    pick = np.concatenate([np.flatnonzero(labels == i)[:per] for i in np.unique(labels)[:identities]])
    faces, labels = [faces[i] for i in pick], labels[pick]
    judge, det = DlibJudge(), MTCNNDetector("cpu")
    same = (labels[:, None] == labels[None, :])[np.triu_indices(len(labels), 1)]
    out, ref = {}, None
    for size in sorted(sizes, reverse=True):
        seen = [resize(resize(a, size, Image.LANCZOS), 112, Image.BICUBIC) for a in faces]
        d = judge.describe_all(seen)
        ref = d.mean(0) if ref is None else ref
        u = centred_unit(d, ref)
        c = (u @ u.T)[np.triu_indices(len(labels), 1)]
        found = ~np.isnan(face_poses(np.stack(seen), det)).any(1)
        out[str(size)] = {"judge_same_identity_accepted": float((c[same] >= threshold).mean()),
                          "judge_different_identity_accepted": float((c[~same] >= threshold).mean()),
                          "judge_same_identity_cos_mean": float(c[same].mean()),
                          "judge_different_identity_cos_mean": float(c[~same].mean()),
                          "mtcnn_faces_found": float(found.mean())}
        print(size, out[str(size)], flush=True)
    return {"faces": len(faces), "identities": int(len(np.unique(labels))), "threshold": threshold, "by_size": out}


def main(argv=None) -> int:
    ap = common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    ap.add_argument("--artifacts", type=Path, default=ROOT / "artifacts", help="a project's artifacts folder (align)")
    ap.add_argument("--identities", type=int, default=80)
    ap.add_argument("--per", type=int, default=5, help="faces per identity")
    ap.add_argument("--sizes", type=int, nargs="+", default=[112, 64, 48, 32])
    ap.add_argument("--threshold", type=float, default=0.235, help="the judge's same-person cosine (centred)")
    a = ap.parse_args(argv)
    if not a.no_wait:
        wait_until_idle(a.max_load)
    b = Bench("judge_resolution", a.device, {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()})
    b.result.update(measure(a.artifacts, a.identities, a.per, a.sizes, a.threshold))
    print(b.write(a.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
