"""The size-matched real subset (tasks/matched.py) on LFW's real people: the synthetic set's identity count, image
count and per-identity counts, drawn deterministically, never more images than a person has; the closest subset
and its shortfall where LFW cannot match. And the train_fr_matched stage (a real subprocess) on real LFW faces:
it trains on that subset and records the shortfall in its run.json."""
import io
import json
import os
import shutil
import subprocess
import sys
import zipfile

import pandas as pd
import yaml
from PIL import Image

from conftest import ROOT, without_prefect
from tasks.matched import size_matched_subset


def lfw_people(lfw_files) -> dict[str, list[str]]:
    """LFW's people and their photos, by name (the zip's listing)."""
    people: dict[str, list[str]] = {}
    for m in sorted(zipfile.ZipFile(lfw_files / "lfw-deepfunneled.zip").namelist()):
        if m.endswith(".jpg"):
            people.setdefault(m.split("/")[1], []).append(m)
    return people


def real_manifest(people: dict[str, list[str]]) -> pd.DataFrame:
    """An align-style manifest of the given people: one row per photo, a label per person."""
    rows = [{"key": f"{n}_{i:04d}", "label": label, "identity": n, "split": "train"}
            for label, (n, photos) in enumerate(sorted(people.items())) for i in range(len(photos))]
    return pd.DataFrame(rows)


def per_label(df: pd.DataFrame) -> list[int]:
    return sorted(df.groupby("label").size().tolist(), reverse=True)


def test_the_subset_takes_the_synthetic_counts_deterministically(lfw_files):
    people = lfw_people(lfw_files)
    real = real_manifest({n: p for n, p in people.items() if len(p) >= 2})  # 1,680 people, 9,164 photos
    have = real.groupby("label").size()
    targets = [30, 12, 8, 8, 6, 5, 5, 3, 2, 2]  # a packaged set's images per identity
    subset, rec = size_matched_subset(real, pd.Series(targets), seed=0)
    assert per_label(subset) == sorted(targets, reverse=True)  # the synthetic distribution, identity for identity
    assert (subset.groupby("label").size() <= have[subset["label"].unique()]).all()
    assert set(subset["key"]) <= set(real["key"]) and subset["key"].is_unique
    assert rec["target"] == {"images": 81, "identities": 10, "images_per_identity": {"min": 2, "max": 30, "mean": 8.1}}
    assert rec["selected"]["images"] == 81 and rec["selected"]["identities"] == 10
    assert rec["shortfall"] == {"images": 0, "identities": 0} and rec["matched"] and rec["exact_distribution"]
    assert rec["real_available"] == {"images": len(real), "identities": len(have)} and rec["seed"] == 0
    again, rec2 = size_matched_subset(real.sample(frac=1.0, random_state=1), targets, seed=0)  # row order: no matter
    assert sorted(again["key"]) == sorted(subset["key"]) and rec2 == rec
    other, _ = size_matched_subset(real, targets, seed=1)
    assert set(other["label"]) != set(subset["label"]) and per_label(other) == per_label(subset)
    # the 30-image identity is one of LFW's few people with that many photos
    assert have[subset.groupby("label").size().idxmax()] >= 30


def test_too_few_identities_or_images_takes_the_closest_and_records_the_shortfall(lfw_files):
    people = lfw_people(lfw_files)
    four = {n: p for n, p in people.items() if len(p) == 4}
    few = real_manifest(dict(sorted(four.items())[:3]))  # 3 real people of 4 photos each
    subset, rec = size_matched_subset(few, [2] * 5, seed=0)  # 5 synthetic identities of 2 images
    assert rec["selected"] == {"images": 10, "identities": 3, "images_per_identity": {"min": 3, "max": 4, "mean": 10 / 3}}
    assert rec["shortfall"] == {"images": 0, "identities": 2} and not rec["matched"] and not rec["exact_distribution"]
    assert rec["images_topped_up"] == 4 and len(subset) == 10  # the missing identities' images, on the 3 people
    small = real_manifest({n: p for n, p in people.items() if 3 <= len(p) <= 5})
    have = small.groupby("label").size()
    subset, rec = size_matched_subset(small, [40, 20, 2], seed=0)  # nobody here has 20 photos
    got = subset.groupby("label").size()
    assert (got <= have[got.index]).all() and len(got) == 3
    assert rec["identities_with_too_few_images"] == 2 and rec["shortfall"]["identities"] == 0
    assert (got == have[got.index]).all()  # every photo of the three: still short of 62
    assert sorted(got.tolist())[1:] == [5, 5]  # the 40 and the 20 took two of the largest people (5 photos)
    assert rec["shortfall"]["images"] == 62 - got.sum() and rec["selected"]["images"] == got.sum() and not rec["matched"]
    empty, rec = size_matched_subset(small.iloc[:0], [3, 3], seed=0)
    assert len(empty) == 0 and rec["shortfall"] == {"images": 6, "identities": 2}


TRAIN_FR_MATCHED = [sys.executable, "-m", "flows", "train-fr-matched"]


def test_train_fr_matched_stage_trains_on_the_subset_and_records_the_shortfall(tmp_path, lfw_files, prefect_api):
    """Six real LFW people (4 photos each) against a synthetic set of 7 identities / 16 images: one identity
    short, the 16 images taken from the six."""
    from tasks.shards import write_shards
    proj = tmp_path / "proj"
    for k in ("flows", "tasks", "models"):
        shutil.copytree(ROOT / k, proj / k, ignore=shutil.ignore_patterns("__pycache__"))
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p["train_fr"].update({"arch": {"layers": [1, 1], "widths": [8, 16], "input_size": 32, "embedding_dim": 16},
                          "epochs": 2, "batch_size": 4, "milestones": [1], "warmup_steps": 1, "val_fraction": 0.25,
                          "val_max_pairs": 100, "val_every": 1})
    (proj / "params.yaml").write_text(yaml.safe_dump(p))
    zf = zipfile.ZipFile(lfw_files / "lfw-deepfunneled.zip")
    people = dict(sorted((n, ph) for n, ph in lfw_people(lfw_files).items() if len(ph) == 4)[:6])
    real = real_manifest(people)
    samples = []
    for r, m in zip(real.itertuples(), [m for n in sorted(people) for m in people[n]]):
        buf = io.BytesIO()
        Image.open(io.BytesIO(zf.read(m))).convert("RGB").crop((69, 69, 181, 181)).save(buf, format="JPEG")
        samples.append({"__key__": r.key, "jpg": buf.getvalue(), "cls": r.label})
    align = proj / "artifacts" / "align"
    align.mkdir(parents=True)
    real["shard"] = [s["shard"] for s in write_shards(samples, align, "faces-train", 10) for _ in range(s["count"])]
    real.to_parquet(align / "manifest.parquet")
    (proj / "artifacts" / "dataset").mkdir()
    synthetic = pd.DataFrame({"key": [f"s{i}" for i in range(16)], "label": [0] * 4 + [i for i in range(1, 7) for _ in (0, 1)],
                              "shard": "synthface-000000.tar"})
    synthetic.to_parquet(proj / "artifacts" / "dataset" / "manifest.parquet")
    env = {**without_prefect(os.environ), "PYTHONPATH": str(proj), "PREFECT_API_URL": prefect_api,
           "SYNTHFACE_PREFECT_HOME": str(tmp_path / "home")}
    r = subprocess.run(TRAIN_FR_MATCHED, cwd=proj, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "cannot match the synthetic set's size" in r.stdout + r.stderr
    out = proj / "artifacts" / "fr_real_matched"
    run = json.loads((out / "run.json").read_text())
    sm, tr = run["size_match"], run["training"]
    assert run["stage"] == "train_fr_matched" and "synthetic_manifest" in run["inputs"]
    assert sm["target"]["images"] == 16 and sm["target"]["identities"] == 7 and sm["matched"] is False
    assert sm["shortfall"] == {"images": 0, "identities": 1} and sm["selected"] == {
        "images": 16, "identities": 6, "images_per_identity": sm["selected"]["images_per_identity"]}
    assert tr["train_images"] + tr["val_images"] == 16 and tr["train_identities"] + tr["val_identities"] == 6
    assert json.loads((out / "config.json").read_text())["num_classes"] == tr["train_identities"]
    assert (out / "encoder.safetensors").is_file()
