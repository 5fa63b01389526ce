"""Would latent diffusion help here? The judge on a first-stage autoencoder's reconstructions of real faces.

    python benchmarks/autoencoder_ceiling.py --artifacts artifacts --no-wait      # ~20 min on 2 cores (1000 steps)
    python benchmarks/autoencoder_ceiling.py --steps 20 --identities 4 --no-wait  # a smoke run

A latent generator's renders are its decoder's outputs, so the decoder's reconstructions of real faces bound how
distinct, by the judge, the renders can be. This trains a diffusers AutoencoderKL (--widths per level; one
2x downsampling between levels, so 3 levels map 64 px to 16 x 16 x 4 latents) on the align stage's training
faces at --resolution (random flips, batch 32, AdamW, L1 + MSE + 1e-6 KL) for --steps, then describes --per
faces of each of the first --identities real identities and their reconstructions (the posterior mean,
decoded) with the dlib judge and MTCNN (benchmarks/generator_recipe.score, which upsamples to 112 px as the
package stage does). Records both sets' judge pair acceptance and detection rates, the reconstruction PSNR and
the training speed, and a grid (originals above, reconstructions below) beside the JSON.
Writes benchmarks/results/autoencoder_ceiling.json.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import ROOT, Bench, common_args, wait_until_idle  # noqa: E402
from benchmarks.generator_recipe import judge_reference, score, train_faces  # noqa: E402


def build_autoencoder(widths: list[int], resolution: int):
    from diffusers import AutoencoderKL
    n = len(widths)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * n,
                         up_block_types=("UpDecoderBlock2D",) * n, block_out_channels=tuple(widths), latent_channels=4,
                         norm_num_groups=8, sample_size=resolution)


def measure(art: Path, widths: list[int], resolution: int, steps: int, identities: int, per: int, threshold: float,
            seed: int, out: Path, log=print) -> dict:
    import torch
    from PIL import Image
    from torch.nn import functional as F

    from models.id3 import to_output
    from tasks.align import MTCNNDetector
    from tasks.judge import DlibJudge
    from tasks.train_generator import to_resolution
    faces, labels = train_faces(art)
    x_all = to_resolution(torch.as_tensor(np.stack(faces)).permute(0, 3, 1, 2).float() / 127.5 - 1, resolution)
    torch.manual_seed(seed)
    vae = build_autoencoder(widths, resolution)
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    t0 = time.time()
    for step in range(steps):
        x = x_all[torch.randint(0, len(x_all), (32,), generator=g)]
        x = torch.where((torch.rand(32, generator=g) < 0.5)[:, None, None, None], x.flip(3), x)
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample(g)).sample
        loss = F.mse_loss(rec, x) + F.l1_loss(rec, x) + 1e-6 * post.kl().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0:
            log(f"step {step}: loss {loss.item():.4f}, {(step + 1) * 32 / (time.time() - t0):.1f} img/s")
    train_s = time.time() - t0
    vae.eval()
    pick = np.concatenate([np.flatnonzero(labels == i)[:per] for i in np.unique(labels)[:identities]])
    with torch.no_grad():
        orig = x_all[pick]
        rec = torch.cat([vae.decode(vae.encode(orig[i:i + 64]).latent_dist.mean).sample for i in range(0, len(orig), 64)])
    psnr = float(10 * np.log10(4 / F.mse_loss(rec.clamp(-1, 1), orig).item()))
    judge, det = DlibJudge(), MTCNNDetector("cpu")
    reference = judge_reference(judge, faces)
    o, r = to_output(orig, "np"), to_output(rec.clamp(-1, 1), "np")
    res = {"original": score(list(o), labels[pick].tolist(), judge, det, reference, threshold),
           "reconstructed": score(list(r), labels[pick].tolist(), judge, det, reference, threshold)}
    k = min(16, len(o))
    Image.fromarray(np.concatenate([np.concatenate(list(o[:k]), 1), np.concatenate(list(r[:k]), 1)], 0)).save(
        out / "autoencoder_ceiling.png")
    lat = resolution // 2 ** (len(widths) - 1)
    return {"autoencoder": {"widths": widths, "latent": [4, lat, lat], "parameters": sum(p.numel() for p in vae.parameters())},
            "resolution": resolution, "steps": steps, "train_seconds": round(train_s, 1),
            "train_images_per_s": round(steps * 32 / train_s, 2), "faces": len(pick),
            "identities": int(len(np.unique(labels[pick]))), "threshold": threshold, "psnr_db": round(psnr, 2), **res}


def main(argv=None) -> int:
    ap = common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    ap.add_argument("--artifacts", type=Path, default=ROOT / "artifacts", help="a project's artifacts folder (align)")
    ap.add_argument("--widths", type=int, nargs="+", default=[32, 64, 64])
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--identities", type=int, default=80)
    ap.add_argument("--per", type=int, default=5, help="faces per identity")
    ap.add_argument("--threshold", type=float, default=0.235, help="the judge's same-person cosine (centred)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    if not a.no_wait:
        wait_until_idle(a.max_load)
    b = Bench("autoencoder_ceiling", a.device, {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()})
    a.out.mkdir(parents=True, exist_ok=True)
    b.result.update(measure(a.artifacts, a.widths, a.resolution, a.steps, a.identities, a.per, a.threshold, a.seed, a.out))
    print(b.write(a.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
