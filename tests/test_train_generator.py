"""Generator training on a shard of real LFW faces: checkpoints, resume, and config-mismatch safety."""
import io
import zipfile

import numpy as np
from PIL import Image

from models.iresnet import IResNet
from tasks.shards import write_shards
from tasks.train_generator import train_generator

G = {"method": "id3", "resolution": 16, "unet": {"block_out_channels": [32, 32], "layers_per_block": 1, "attention_head_dim": 8,
                                "norm_num_groups": 8},
     "conditioner_dims": [32, 32, 32], "num_train_timesteps": 1000, "cond_drop": 0.1, "steps": 2, "batch_size": 4,
     "lr": 1e-3, "ema_decay": 0.9, "checkpoint_every": 1, "lambda_scale": 1.0, "kappa_scale": 0.1, "id_schedule": "logistic", "seed": 0}


def lfw_face_shards(tmp_path, lfw_files, n=8):
    """n real LFW faces (centre crops, two identities by parity) in one shard, and random unit embeddings."""
    zf = zipfile.ZipFile(lfw_files / "lfw-deepfunneled.zip")
    names = [m for m in zf.namelist() if m.endswith(".jpg")][:n]
    samples = []
    for i, m in enumerate(names):
        im = Image.open(io.BytesIO(zf.read(m))).convert("RGB").crop((69, 69, 181, 181))
        buf = io.BytesIO(); im.save(buf, format="JPEG")
        samples.append({"__key__": f"k{i}", "jpg": buf.getvalue(), "cls": i % 2})
    shards = [tmp_path / s["shard"] for s in write_shards(samples, tmp_path, "faces", n)]
    rng = np.random.default_rng(0)
    return shards, {f"k{i}": (v / np.linalg.norm(v)).astype(np.float32) for i, v in enumerate(rng.standard_normal((n, 16)))}


def test_checkpoint_and_resume(tmp_path, lfw_files):
    shards, emb = lfw_face_shards(tmp_path, lfw_files)
    attr = {f"k{i}": np.zeros(4, np.float32) for i in range(8)}  # yaw, pitch, roll, age
    enc = IResNet((1, 1), (8, 16), 16, 16).eval().requires_grad_(False)
    ck = tmp_path / "ckpt"
    pipe, stats = train_generator(shards, emb, attr, 8, enc, G, ck, log=lambda s: None)
    assert stats["steps"] == 2 and stats["resumed_from"] == 0 and (ck / "last.pt").is_file()
    logs = []
    pipe, stats = train_generator(shards, emb, attr, 8, enc, {**G, "steps": 3}, ck, log=logs.append)
    assert stats["resumed_from"] == 2 and stats["steps"] == 3 and any("resumed" in s for s in logs)
    logs = []
    _, stats = train_generator(shards, emb, attr, 8, enc, {**G, "steps": 1, "lr": 5e-4}, ck, log=logs.append)
    assert stats["resumed_from"] == 0 and any("another configuration" in s for s in logs)


def test_a_patch_unet_generator_trains_saves_and_renders_at_full_resolution(tmp_path, lfw_files):
    """generator.patch_size 2: the UNet runs on 2x2 pixel blocks (half the resolution), yet the pipeline takes and
    renders full-resolution images, with the cosine schedule, Min-SNR weighting, warm-up and the identity in the
    time embedding of the demo recipe; save / load gives the same renders."""
    import torch

    from models import load_pipeline
    from models.id3 import noise_mse
    from models.patch_unet import PatchUNet
    shards, emb = lfw_face_shards(tmp_path, lfw_files)
    attr = {f"k{i}": np.zeros(4, np.float32) for i in range(8)}
    enc = IResNet((1, 1), (8, 16), 16, 16).eval().requires_grad_(False)
    p = {**G, "resolution": 32, "patch_size": 2, "beta_schedule": "squaredcos_cap_v2", "prediction_type": "v_prediction",
         "snr_gamma": 5.0, "warmup_steps": 4, "unet": {**G["unet"], "identity_in_time": True, "attention": [False, False]}}
    pipe, stats = train_generator(shards, emb, attr, 8, enc, p, tmp_path / "ck", log=lambda s: None)
    assert isinstance(pipe.unet, PatchUNet) and pipe.unet.unet.config.sample_size == 16
    inner = pipe.unet.unet.config
    # generator.unet.attention: transformer blocks only in the middle here (none at either level)
    assert inner.down_block_types == ("DownBlock2D", "DownBlock2D") and inner.up_block_types == ("UpBlock2D", "UpBlock2D")
    assert inner.addition_embed_type == "text" and inner.resnet_time_scale_shift == "scale_shift"
    ctx = pipe.conditioner(torch.from_numpy(np.stack([emb["k0"], emb["k1"]])), torch.zeros(2, 4))
    aug = pipe.unet.unet.get_aug_embed(None, ctx, {})  # two identities -> two different time-embedding offsets
    assert aug.shape == (2, inner.block_out_channels[0] * 4) and not torch.allclose(aug[0], aug[1])
    assert pipe.unet.unet.config.in_channels == 12 and pipe.scheduler.config.beta_schedule == "squaredcos_cap_v2"
    y = torch.from_numpy(np.stack([emb["k0"], emb["k1"]]))
    a = pipe(y, torch.zeros(2, 4), seeds=[1, 2], num_inference_steps=3, output_type="np")
    assert a.shape == (2, 32, 32, 3)
    pipe.save_pretrained(tmp_path / "gen")
    b = load_pipeline(tmp_path / "gen")(y, torch.zeros(2, 4), seeds=[1, 2], num_inference_steps=3, output_type="np")
    assert np.array_equal(a, b)
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    # a fresh process (the sample stage's) resolves the saved PatchUNet without having imported it first
    import subprocess
    import sys

    from conftest import ROOT
    code = f"from models import load_pipeline; print(type(load_pipeline({str(tmp_path / 'gen')!r}).unet).__name__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.stdout.strip() == "PatchUNet", out.stderr[-2000:]


def test_v_prediction_and_min_snr_weighting():
    """A perfect v prediction gives zero loss and eps_hat = eps exactly; Min-SNR weights each sample's error by
    min(SNR, gamma) / SNR (epsilon) or / (SNR + 1) (v): only nearly clean steps are down-weighted."""
    import torch
    from diffusers import DDPMScheduler

    from models.id3 import noise_mse
    x0, eps = torch.rand(3, 3, 8, 8) * 2 - 1, torch.randn(3, 3, 8, 8)
    for ptype in ("epsilon", "v_prediction"):
        sch = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type=ptype)
        t = torch.tensor([10, 500, 990])
        x_t = sch.add_noise(x0, eps, t)
        perfect = eps if ptype == "epsilon" else sch.get_velocity(x0, eps, t)
        loss, eps_hat = noise_mse(perfect, x0, x_t, eps, t, sch, 5.0)
        assert float(loss) == 0 and torch.allclose(eps_hat, eps, atol=1e-4)
        err = perfect + 1.0  # unit squared error on every pixel
        ab = sch.alphas_cumprod[t]
        snr = ab / (1 - ab)
        w = snr.clamp(max=5) / (snr if ptype == "epsilon" else snr + 1)
        assert torch.allclose(noise_mse(err, x0, x_t, eps, t, sch, 5.0)[0], w.mean(), rtol=1e-5)
        assert torch.allclose(noise_mse(err, x0, x_t, eps, t, sch, None)[0], torch.tensor(1.0))


def test_warm_up_scales_the_first_steps_learning_rate(tmp_path, lfw_files):
    """One step with warmup_steps 4 moves the weights a quarter as far as without (Adam: the step is ~lr)."""
    import torch
    shards, emb = lfw_face_shards(tmp_path, lfw_files)
    attr = {f"k{i}": np.zeros(4, np.float32) for i in range(8)}
    enc = IResNet((1, 1), (8, 16), 16, 16).eval().requires_grad_(False)
    moved = {}
    for w in (0, 4):
        torch.manual_seed(0)
        p = {**G, "steps": 1, "ema_decay": 0.0, "warmup_steps": w}
        pipe, _ = train_generator(shards, emb, attr, 8, enc, p, tmp_path / f"ck{w}", log=lambda s: None)
        torch.manual_seed(0)
        from tasks.train_generator import build_pipeline
        init = build_pipeline(p, 16).unet.conv_in.weight
        moved[w] = float((pipe.unet.conv_in.weight - init).abs().mean())
    assert 0.2 < moved[4] / moved[0] < 0.3
