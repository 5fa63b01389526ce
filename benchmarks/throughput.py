"""Throughput of each heavy step through the project's real code, each against a limit measured in the same run.

    python benchmarks/throughput.py --artifacts /work/main/artifacts                  # CPU demo, ~4 min on 2 cores
    python benchmarks/throughput.py --device cuda --dtype bf16 --params params-paper.yaml --sample-images 500 --artifacts <dir>

- align: the body of flows/align.align_chunk on LFW training photos (read, decode, detect, warp, encode, pose);
  limit: the bare MTCNN detection of the same decoded photos in the same batches - the stage runs that and more.
- sample: tasks/sample.render_block under the [sample] guidance; FLOP/s = FlopCounterMode's count of one UNet
  call per image x UNet rows per image (hooked) x img/s, and of a whole guided step (UNet and encoder forward,
  their backward) x steps x img/s; limit: a large torch.mm in the same precision.
- train_fr: tasks/fr_train.train_fr (loader, augmentation, SGD); FLOP/s of one counted training step (forward
  and backward) x img/s; limit: the same torch.mm in fp32.
- read: tasks/fr_train.loader (WebDataset read, shuffle, decode, batching); limit: decode_image over the same
  image bytes already in memory.
- write: tasks/shards.write_shards (tar, fsync, rename, sha256); limit: fsync'd sequential writes of the same
  bytes as the same number of files, in the same folder.

Without a generator in --artifacts (e.g. paper scale, no trained model), the sample step builds the UNet and
encoder from the params file with random weights: speed does not depend on the weights' values.
Writes benchmarks/results/throughput.json.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import (DTYPES, ROOT, Bench, RowCounter, common_args, count_flops, matmul_rate,  # noqa: E402
                               timed, wait_until_idle)
from tasks.params import load_params  # noqa: E402
from tasks.sample import plan_identities, render_block  # noqa: E402
from tasks.shards import decode_image, read_tar, write_shards  # noqa: E402


def align_throughput(data_dir: Path, p: dict, images: int, device: str) -> dict:
    """img/s of the align chunk code vs the bare MTCNN detection of the same photos."""
    os.environ["SYNTHFACE_DEVICE"] = device
    from flows import align as stage
    from tasks import lfw
    from tasks.align import decode
    train, _ = lfw.select(data_dir / "people.txt", data_dir / "pairs.txt", p)
    members = [[Path(m).stem.replace(".", "_"), m, {"split": "train", "identity": n, "fold": f}] for m, n, f in train[:images]]
    zip_path = data_dir / lfw.ZIP_NAME
    weights = stage.used_weights(p)
    stage.align_chunk.fn("lfw", zip_path, members[:2], p, weights)  # warm-up: opens the zip, loads the detector
    secs, (acc, rej) = timed(lambda: stage.align_chunk.fn("lfw", zip_path, members, p, weights), device)
    det = next(iter(stage._DETECTORS.values()))[0]
    read = stage._reader("lfw", zip_path)
    dsecs, arrays = timed(lambda: [decode(read(m[1]))[0] for m in members])
    arrays = [a for a in arrays if a is not None]
    bs = p["batch_size"]
    # one size per batch, as align_items groups them (LFW photos are all 250 x 250)
    groups = {}
    for a in arrays:
        groups.setdefault(a.shape, []).append(a)
    batches = [g[i:i + bs] for g in groups.values() for i in range(0, len(g), bs)]
    det_secs, _ = timed(lambda: [det.detect(b) for b in batches], device)
    rate, limit = len(members) / secs, len(arrays) / det_secs
    return {"images": len(members), "accepted": len(acc), "rejected": len(rej), "seconds": secs, "images_per_s": rate,
            "limit": "bare MTCNN detection (detector.detect) of the same decoded photos in the same batches",
            "limit_images_per_s": limit, "ratio_to_limit": rate / limit, "decode_images_per_s": len(arrays) / dsecs,
            "detector": p["detector"], "batch_size": bs}


def generation(art: Path, params: dict, device: str):
    """(pipeline, encoder, real stats, attribute pool, where the weights came from)."""
    gen = art / "generator" / "pipeline"
    if gen.is_dir():
        from benchmarks.sampler_sweep import load_generation
        return (*load_generation(art, device), str(gen))
    from tasks.encoder import build
    from tasks.train_generator import build_pipeline
    torch.manual_seed(0)
    arch = params["encoder"]["arch"]
    enc = build({"kind": "iresnet", "arch": arch}).eval().requires_grad_(False).to(device)
    pipe = build_pipeline(params["generator"], embedding_dim=arch["embedding_dim"])
    rng = np.random.default_rng(0)
    e = rng.standard_normal((64, arch["embedding_dim"]))
    real = {"embeddings": e / np.linalg.norm(e, axis=1, keepdims=True), "labels": np.arange(64) // 4}
    return pipe, enc, real, rng.uniform(-1, 1, (64, 4)), "random init from the params file's generator/encoder sections"


def sample_throughput(art: Path, params: dict, images: int, device: str, rates: dict) -> dict:
    """img/s of render_block under the [sample] settings, its counted FLOPs per image and FLOP/s vs matmul."""
    pipe, enc, real, pool, source = generation(art, params, device)
    s = params["sample"]
    per_id = s["embeddings_per_identity"] * s["images_per_embedding"]
    n_ids = max(1, -(-images // per_id))
    p = {**s, "num_identities": max(2, n_ids)}
    plan = plan_identities(real, p, pool)
    ids = list(range(n_ids))
    rows = n_ids * per_id
    q = {**p, "batch_size": min(s["batch_size"], rows)}
    render_block(pipe, enc, plan, [0], {**q, "num_inference_steps": 1}, device)  # warm-up
    with RowCounter(pipe.unet) as unet_rows:
        secs, out = timed(lambda: render_block(pipe, enc, plan, ids, q, device), device)
    rate = len(out) / secs
    nfe = unet_rows.per_image(len(out), q["batch_size"])
    b = q["batch_size"]
    dev = torch.device(device)
    x = torch.randn(b, 3, pipe.unet.config.sample_size, pipe.unet.config.sample_size, device=dev)
    ctx = pipe.conditioner.null(b).to(dev)
    from models.id3 import autocast

    def unet_call():
        with torch.no_grad(), autocast(dev):
            pipe.unet(x, torch.full((b,), 500, device=dev), encoder_hidden_states=ctx)
    unet_flops = count_flops(unet_call) / b
    rows_1 = [r for r in plan["rows"] if r["identity"] in ids][:b]
    step_flops = count_flops(lambda: render_block(pipe, enc, {**plan, "rows": rows_1}, ids, {**q, "num_inference_steps": 1},
                                                  device)) / len(rows_1)
    ref = rates["sample"]
    unet_rate = unet_flops * nfe * rate
    total_rate = step_flops * s["num_inference_steps"] * rate
    return {"weights": source, "resolution": pipe.unet.config.sample_size, "images": len(out), "batch_size": b,
            "sampler": s["sampler"], "steps": s["num_inference_steps"], "id_weight": s["id_weight"], "seconds": secs,
            "images_per_s": rate, "nfe_per_image": nfe, "unet_flops_per_call_per_image": unet_flops,
            "unet_flops_per_s": unet_rate, "unet_ratio_to_matmul": unet_rate / ref["flops_per_s"],
            "guided_step_flops_per_image": step_flops, "all_flops_per_s": total_rate,
            "all_ratio_to_matmul": total_rate / ref["flops_per_s"], "matmul_reference": ref["dtype"],
            "note": "all_* counts a whole guided step (UNet forward, identity encoder forward, their backward)"}


def train_split(art: Path, images: int) -> tuple[list[Path], dict[str, int]]:
    """The first shard of the real aligned training faces and up to `images` of its keys, relabelled."""
    m = pd.read_parquet(art / "align" / "manifest.parquet")
    m = m[m["split"] == "train"]
    first = sorted(m["shard"].unique())[0]
    m = m[m["shard"] == first].sort_values("key").head(images)
    labels = {c: i for i, c in enumerate(sorted(m["label"].unique()))}
    return [art / "align" / first], {k: labels[c] for k, c in zip(m["key"], m["label"])}


def train_step_flops(p: dict, num_classes: int, size: int, device: str) -> float:
    """FLOPs per image of one FR training step (forward and backward of backbone + margin head)."""
    from models.margin import MarginHead
    from tasks.encoder import build
    from tasks.fr_train import _Net
    model = build({"kind": "iresnet", "arch": p["arch"]}).to(device)
    kw = {"m_additive": p["margin"]["m"]} if p["margin"]["kind"] == "cosface" else {"m_angular": p["margin"]["m"]}
    net = _Net(model, MarginHead(p["arch"]["embedding_dim"], num_classes, p["margin"]["kind"], s=p["margin"]["s"], **kw).to(device))
    b = p["batch_size"]
    x, y = torch.randn(b, 3, size, size, device=device), torch.randint(0, num_classes, (b,), device=device)
    return count_flops(lambda: net(x, y)[1].backward()) / b


def train_throughput(art: Path, p: dict, images: int, epochs: int, device: str, rates: dict) -> dict:
    from tasks.fr_train import train_fr
    shards, train = train_split(art, images)
    q = {**p, "epochs": epochs, "val_fraction": 0.0}
    secs, (_, stats) = timed(lambda: train_fr(shards, train, {}, q, device, log=lambda s: None), device)
    rate = stats["images_per_s"]
    first = next(read_tar(shards[0]))
    size = decode_image(first.get("jpg", first.get("png"))).shape[0]
    flops = train_step_flops(q, len(set(train.values())), size, device)
    ref = rates["train"]
    return {"images": len(train), "epochs": epochs, "batch_size": p["batch_size"], "num_workers": p["num_workers"],
            "seconds": secs, "images_per_s": rate, "flops_per_image": flops, "flops_per_s": flops * rate,
            "ratio_to_matmul": flops * rate / ref["flops_per_s"], "matmul_reference": ref["dtype"]}


def read_throughput(shards: list[Path], batch_size: int, num_workers: int = 0) -> dict:
    """img/s of the training loader (read, shuffle, decode, batch) vs decoding the same bytes in a bare loop."""
    from tasks.fr_train import loader
    blobs = [s.get("jpg", s.get("png")) for sh in shards for s in read_tar(sh)]
    secs, n = timed(lambda: sum(len(b[1]) for b in loader(shards, batch_size, 0, 0, num_workers)))
    bare, _ = timed(lambda: [decode_image(b) for b in blobs])
    rate, limit = n / secs, len(blobs) / bare
    return {"images": n, "batch_size": batch_size, "num_workers": num_workers, "seconds": secs, "images_per_s": rate,
            "limit": "decode_image over the same bytes, already in memory, one process",
            "limit_images_per_s": limit, "ratio_to_limit": rate / limit,
            "format": "png" if "png" in next(read_tar(shards[0])) else "jpg"}


def raw_write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_throughput(shard: Path, images: int, maxcount: int, scratch: Path, repeat: int = 3) -> dict:
    """MB/s of write_shards vs plain fsync'd sequential writes of the same bytes, alternating, best of `repeat`."""
    samples = [s for _, s in zip(range(images), read_tar(shard))]
    work = Path(tempfile.mkdtemp(prefix="bench-write-", dir=scratch))
    try:
        best_shards, best_raw, total = float("inf"), float("inf"), 0
        for r in range(repeat):
            d = work / f"shards{r}"
            secs, infos = timed(lambda: write_shards(samples, d, "bench", maxcount))
            best_shards = min(best_shards, secs)
            blobs = [(d / i["shard"]).read_bytes() for i in infos]
            total = sum(len(b) for b in blobs)
            raw = work / f"raw{r}"
            raw.mkdir()
            secs, _ = timed(lambda: [raw_write(raw / f"{k}.bin", b) for k, b in enumerate(blobs)])
            best_raw = min(best_raw, secs)
            shutil.rmtree(d); shutil.rmtree(raw)
        mb = total / 1e6
        return {"images": len(samples), "shards": len(blobs), "megabytes": mb, "repeat": repeat,
                "mb_per_s": mb / best_shards, "limit": "open/write/fsync of the same bytes as the same number of files",
                "limit_mb_per_s": mb / best_raw, "ratio_to_limit": best_raw / best_shards, "scratch": str(scratch),
                "note": "write_shards also reads each shard back for its sha256 (manifest), which the limit does not"}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def rates_for(device: str, dtype: str, seconds: float) -> dict:
    """The reference matmul rate of each component's own precision: sampling runs under bf16 autocast on CUDA
    (models/id3.autocast), FR training in fp32."""
    fp32 = matmul_rate(device, torch.float32, seconds=seconds)
    low = matmul_rate(device, DTYPES[dtype], seconds=seconds) if dtype != "fp32" else fp32
    return {"fp32": fp32, dtype: low, "sample": low if device.startswith("cuda") else fp32, "train": fp32}


def run(art: Path, params: dict, data_dir: Path | None, device: str = "cpu", dtype: str = "fp32", align_images: int = 64,
        sample_images: int = 32, train_images: int = 1024, train_epochs: int = 1, write_images: int = 2000,
        scratch: Path | None = None, matmul_seconds: float = 3.0, log=print) -> dict:
    out = {"matmul": rates_for(device, dtype, matmul_seconds)}
    log(f"matmul: {out['matmul']['fp32']['flops_per_s'] / 1e9:.1f} GFLOP/s fp32")
    if data_dir is not None:
        out["align"] = align_throughput(data_dir, params["align"], align_images, device)
        log(f"align: {out['align']['images_per_s']:.1f} img/s, {out['align']['ratio_to_limit']:.2f} of detection")
    out["sample"] = sample_throughput(art, params, sample_images, device, out["matmul"])
    log(f"sample: {out['sample']['images_per_s']:.2f} img/s, UNet at {out['sample']['unet_ratio_to_matmul']:.3f} of matmul")
    out["train_fr"] = train_throughput(art, params["train_fr"], train_images, train_epochs, device, out["matmul"])
    log(f"train_fr: {out['train_fr']['images_per_s']:.1f} img/s, {out['train_fr']['ratio_to_matmul']:.3f} of matmul")
    shards = train_split(art, 1)[0]
    out["read"] = read_throughput(shards, params["train_fr"]["batch_size"])
    log(f"read: {out['read']['images_per_s']:.0f} img/s, {out['read']['ratio_to_limit']:.2f} of bare decode")
    out["write"] = write_throughput(shards[0], write_images, params["package"]["shard_size"], scratch or Path(tempfile.gettempdir()))
    log(f"write: {out['write']['mb_per_s']:.0f} MB/s, {out['write']['ratio_to_limit']:.2f} of raw fsync'd writes")
    out["matmul_end"] = matmul_rate(device, torch.float32, seconds=matmul_seconds)
    return out


def main(argv=None) -> int:
    ap = common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    ap.add_argument("--artifacts", type=Path, default=ROOT / "artifacts", help="a project's artifacts (align; generator optional)")
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument("--lfw", type=Path, default=ROOT.parent / "shared" / "datasets" / "lfw",
                    help="folder with the LFW zip, people.txt and pairs.txt (absent: no align figures)")
    ap.add_argument("--align-images", type=int, default=64)
    ap.add_argument("--sample-images", type=int, default=32)
    ap.add_argument("--train-images", type=int, default=1024)
    ap.add_argument("--write-images", type=int, default=2000)
    ap.add_argument("--scratch", type=Path, default=None, help="folder for the write test (default: the system temp folder)")
    a = ap.parse_args(argv)
    if not a.no_wait:
        wait_until_idle(a.max_load)
    b = Bench("throughput", a.device, {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()})
    b.result.update(run(a.artifacts, load_params(a.params), a.lfw if a.lfw.is_dir() else None, a.device, a.dtype,
                        a.align_images, a.sample_images, a.train_images, 1, a.write_images, a.scratch))
    print(b.write(a.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
