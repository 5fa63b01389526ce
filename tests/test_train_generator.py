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
    attr = {f"k{i}": np.zeros(3, np.float32) for i in range(8)}
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
