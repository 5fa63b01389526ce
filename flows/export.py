"""Export a packaged dataset for trainers outside this project: an insightface RecordIO pair (what
arcface_torch-style trainers read unchanged) or an ImageFolder tree. Image bytes are copied, not
re-encoded; labels are the dataset's `cls`.

    python -m flows export --format recordio --out exports/synthface      # -> synthface/train.rec + train.idx
    python -m flows export --format imagefolder --out exports/images      # -> images/<label:06d>/<key>.png
    python -m flows export ... --dataset path/to/dataset                  # a pulled release (default artifacts/dataset)
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

import pandas as pd

from tasks.interchange import export_imagefolder, export_recordio
from tasks.shards import tar_index


def label_ordered(dataset: Path) -> Iterator[tuple[int, str, bytes]]:
    """(label, key, image bytes) grouped by label in increasing order (RecordIO's identity records need
    it; a merged identity's images sit in shards far from its label's other images), read by offset."""
    m = pd.read_parquet(dataset / "manifest.parquet")
    m = m.sort_values(["label", "key"], kind="stable")
    index = {s: tar_index(dataset / s) for s in m["shard"].unique()}
    handles = {s: open(dataset / s, "rb") for s in index}
    try:
        for label, key, shard in zip(m["label"], m["key"], m["shard"]):
            if not KEY.fullmatch(str(key)):  # a pulled manifest is input: a key must not name a path
                raise ValueError(f"{shard}: sample key {key!r} is not [A-Za-z0-9_-]+")
            members = index[shard].get(key)
            if members is None:
                raise ValueError(f"{shard}: sample {key} of the manifest is missing")
            ext = "png" if "png" in members else "jpg"
            off, size = members[ext]
            f = handles[shard]
            f.seek(off)
            yield int(label), key, f.read(size)
    finally:
        for f in handles.values():
            f.close()


KEY = re.compile(r"[A-Za-z0-9_-]+")


def export(fmt: str, out: Path, dataset: Path) -> dict:
    if not (dataset / "manifest.parquet").is_file():
        raise FileNotFoundError(f"{dataset}: no manifest.parquet (run `dvc repro package`, or pass --dataset)")
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} is not empty: export into a new folder, so no older file mixes in")
    if fmt == "recordio":
        return export_recordio(((label, data) for label, _, data in label_ordered(dataset)), out / "train")
    if fmt == "imagefolder":
        return export_imagefolder(label_ordered(dataset), out)
    raise ValueError(f"export: unknown format {fmt!r} (recordio or imagefolder)")
