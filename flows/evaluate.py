"""evaluate stage: verification on the held-out LFW pairs for the real-trained baseline and the
synthetic-trained model side by side, the dlib judge's identity consistency of the synthetic set,
ROC curves and a sample grid.

    python -m flows evaluate   # params [evaluate] -> metrics/verification.json, metrics/dataset.json,
                               #   plots/roc_{real,synthetic}.csv, plots/sample_grid.png
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from PIL import Image
from prefect import flow, get_run_logger

from tasks.encoder import embed, load_encoder
from tasks.fr_train import decode_image
from tasks.io import atomic_path, write_json
from tasks.judge import DlibJudge, identity_consistency
from tasks.shards import read_tar
from tasks.verification import roc, verify

from . import ROOT
from .common import RunRecord, device, params, stage_dir


def _images(shards, keys=None) -> tuple[list[str], np.ndarray, list[int]]:
    out_k, out_i, out_c = [], [], []
    for sh in shards:
        for s in read_tar(sh):
            if keys is None or s["__key__"] in keys:
                data = s.get("jpg", s.get("png"))
                out_k.append(s["__key__"]); out_c.append(int(s["cls"]))
                out_i.append(decode_image(data))
    return out_k, np.stack(out_i), out_c


def sample_grid(images: np.ndarray, identity: np.ndarray, rows: int, cols: int, tile: int = 64) -> Image.Image:
    ids = list(dict.fromkeys(identity.tolist()))[:rows]
    grid = Image.new("RGB", (cols * tile, len(ids) * tile), (255, 255, 255))
    for r, i in enumerate(ids):
        for c, im in enumerate(images[identity == i][:cols]):
            grid.paste(Image.fromarray(im).resize((tile, tile), Image.BICUBIC), (c * tile, r * tile))
    return grid


@flow(name="evaluate")
def evaluate_flow(params_path: str = "params.yaml") -> dict:
    log = get_run_logger()
    p = params(params_path)["evaluate"]
    art = ROOT / "artifacts"
    align, ds = art / "align", art / "dataset"
    (ROOT / "metrics").mkdir(exist_ok=True); (ROOT / "plots").mkdir(exist_ok=True)
    rec = RunRecord("evaluate", p, stage_dir("evaluate"), {"encoder": art / "encoder", "fr_synthetic": art / "fr_synthetic",
                                                      "dataset": ds / "manifest.parquet"})
    pairs = pd.read_parquet(align / "eval_pairs.parquet")
    m = pd.read_parquet(align / "manifest.parquet")
    keys, imgs, _ = _images(sorted(align / s for s in m[m["split"] == "eval"]["shard"].unique()))
    idx = {k: i for i, k in enumerate(keys)}
    a = pairs["key_a"].map(idx).to_numpy(); b = pairs["key_b"].map(idx).to_numpy()
    results = {}
    for name, d in [("real", art / "encoder"), ("synthetic", art / "fr_synthetic")]:
        emb = embed(load_encoder(d, device()), imgs)
        results[name] = verify(emb[a], emb[b], pairs["issame"].to_numpy(), p["folds"], p["far"])
        rows = roc(emb[a], emb[b], pairs["issame"].to_numpy())
        with atomic_path(ROOT / "plots" / f"roc_{name}.csv") as tmp:
            pd.DataFrame(rows).to_csv(tmp, index=False)
        log.warning(f"evaluate: {name} LFW held-out accuracy {results[name]['accuracy']:.4f} +- {results[name]['accuracy_std']:.4f}")
    write_json(ROOT / "metrics" / "verification.json", {"lfw_heldout": results})
    # dataset quality by an independent judge, with real training faces as the reference point
    dm = pd.read_parquet(ds / "manifest.parquet")
    skeys, simgs, scls = _images(sorted(ds / s for s in dm["shard"].unique()))
    n = min(p["judge_max_images"], len(skeys))
    judge = DlibJudge()
    synth = identity_consistency(judge.describe_all(simgs[:n]), np.array(scls[:n]))
    tr = m[m["split"] == "train"].sort_values("key").head(n)
    rkeys, rimgs, rcls = _images(sorted(align / s for s in tr["shard"].unique()), set(tr["key"]))
    real = identity_consistency(judge.describe_all(rimgs), np.array(rcls))
    dataset = {"judge": "dlib_resnet_v1", "synthetic": synth, "real_train_reference": real}
    write_json(ROOT / "metrics" / "dataset.json", dataset)
    with atomic_path(ROOT / "plots" / "sample_grid.png") as tmp:
        sample_grid(simgs, np.array(scls), p["grid_identities"], p["grid_images"]).save(tmp, format="PNG")
    log.warning(f"evaluate: judge identity consistency synthetic {synth['mean_cos_to_centre']:.4f}, real {real['mean_cos_to_centre']:.4f}")
    return rec.finish(verification=results, dataset=dataset)
