"""End to end on a micro configuration of real LFW faces: `dvc repro` of the whole DAG in a temporary copy of the
project (built once per test session by the micro_baseline fixture, both FR stages data-parallel over two
processes); each test then works on its own copy of it.

test_dvc_repro_micro: the DAG's outputs; a second repro is a no-op; an ablation experiment changing sample.*
reruns only sample and what follows it; a .bin dropped into the benchmarks folder reruns evaluate alone and
becomes a report column (here the held-out pairs again, so its figures must equal lfw_heldout's exactly); align
and package killed with SIGKILL and rerun give the same bytes; then the dataset product (check_dataset_product).
test_method_experiments: generator.method=cemiface and =idbooth rerun the generator and what follows it, ID-Booth
packages the augmented set (real + generated faces of the same people), and the method table compares all
three. Every stage process talks to one Prefect server (conftest.prefect_api) instead of starting its own.

    pytest -q -n 2 tests/test_pipeline_e2e.py   # the two tests on two workers, one baseline build
"""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import ROOT, lfw_dir, output_files, without_prefect

MICRO = {
    "align": {"max_train_people": 12, "min_images_per_person": 6, "max_images_per_person": 6, "max_pairs_per_fold": 10,
              "chunk_size": 64, "shard_size": 40},
    "encoder": {"arch": {"layers": [1, 1], "widths": [16, 32], "input_size": 32, "embedding_dim": 32},
                "epochs": 2, "batch_size": 16, "milestones": [1], "warmup_steps": 2},
    "generator": {"resolution": 16, "unet": {"block_out_channels": [32, 32], "layers_per_block": 1,
                                             "attention_head_dim": 8, "norm_num_groups": 8, "attention": [False, True]},
                  "conditioner_dims": [32, 32, 32], "steps": 4, "batch_size": 8, "checkpoint_every": 2,
                  "cemiface": {"steps": 6},  # its own count, unlike generator.steps: test_method_experiments tells them apart
                  "idbooth": {"vae_steps": 4, "base_steps": 4, "num_identities": 4, "lora_steps": 2, "lora_batch_size": 2,
                              "prior_images": 4, "prior_steps": 3}},
    "sample": {"num_identities": 4, "embeddings_per_identity": 2, "images_per_embedding": 1, "anchor_iters": 20,
               "num_inference_steps": 3, "block_size": 2, "batch_size": 8, "idbooth": {"num_inference_steps": 3}},
    # 4 micro identities of one 16 px face, 12 real people (66 impostor pairs: too few to resolve privacy_fmr),
    # so the thresholds are given (tests/test_filters.py covers the calibrated ones)
    "package": {"shard_size": 5, "privacy_threshold": {"encoder": 0.999, "judge": 0.999}, "unique_radius": 1.0,
                "min_images_per_identity": 2, "judge_images_per_identity": 0,
                "face_filter": False},  # a few-step 16 px generator draws no faces; the filter is tested on its own
    # both FR stages train data-parallel: two gloo processes under torchrun (tasks/fr_dist.py)
    "train_fr": {"arch": {"layers": [1, 1], "widths": [16, 32], "input_size": 32, "embedding_dim": 32},
                 "epochs": 1, "batch_size": 4, "milestones": [1], "warmup_steps": 1,
                 "distributed": {"nproc_per_node": 2, "nnodes": 1, "rdzv_endpoint": None}},
    "evaluate": {"judge_max_identities": 3, "hist_pairs": 200, "grid_identities": 2, "grid_images": 2},
}


STAGES = ("align", "train_encoder", "train_generator", "sample", "package", "train_fr_real", "train_fr", "train_fr_matched",
          "evaluate")
REAL, MATCHED, RATIO = "real (LFW train split)", "real (LFW train split, size-matched)", "synthetic_over_matched_real"


def rows_of(report: dict) -> dict:
    """The report's rows (one per training set), without its summary keys."""
    return {k: v for k, v in report.items() if k not in (RATIO, "skipped_benchmarks")}


def merge(base, over):
    for k, v in over.items():
        if isinstance(v, dict) and k in base and isinstance(base[k], dict) and not set(v) >= set(base[k]):
            merge(base[k], v)
        else:
            base[k] = v
    return base


def run(cmd, cwd, env):
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert r.returncode == 0, f"{cmd} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout + r.stderr


def project_env(prefect_api: str) -> dict:
    """A stage process's environment: results and caches in the project's own Prefect home, the API of this
    worker's test server."""
    return {**without_prefect(os.environ), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
            "SYNTHFACE_LFW_DIR": str(lfw_dir()), "PREFECT_API_URL": prefect_api}


def build_baseline(proj: Path, env: dict) -> None:
    """The micro project: a copy of the pipeline with MICRO params, LFW fetched and tracked, `dvc repro` of every
    stage, committed as 'baseline'. The repro's log is kept beside the project (repro.log)."""
    keep = ["flows", "tasks", "models", "benchmarks", "dvc.yaml", "params.yaml", "data.dvc", ".dvc/config", ".dvc/plots",
            ".dvcignore", ".gitignore", "weights/README.md"]
    for k in keep:
        src = ROOT / k
        if src.is_dir():
            shutil.copytree(src, proj / k, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            (proj / k).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, proj / k)
    p = merge(yaml.safe_load((ROOT / "params.yaml").read_text()), MICRO)
    (proj / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    run(["git", "init", "-q"], proj, env)
    run(["git", "config", "user.name", "synthface-test"], proj, env)
    run(["git", "config", "user.email", "test@synthface.invalid"], proj, env)
    run([sys.executable, "-m", "flows", "fetch-data"], proj, env)
    run(["dvc", "add", "-q", "data"], proj, env)
    out = run(["dvc", "repro"], proj, env)
    run(["git", "add", "-A"], proj, env)
    run(["git", "commit", "-qm", "baseline"], proj, env)
    (proj.parent / "repro.log").write_text(out)


@pytest.fixture(scope="session")
def micro_baseline(tmp_path_factory, prefect_api, worker_id) -> Path:
    """The micro DAG run once per test session: under xdist the workers share one build (a file lock in their
    common temporary folder), and each test works on its own copy (copy_baseline)."""
    from filelock import FileLock
    root = tmp_path_factory.getbasetemp()
    if worker_id != "master":
        root = root.parent  # shared by the workers of this session
    base = root / "micro-baseline"
    with FileLock(str(root / "micro-baseline.lock")):
        if not (base / "done").is_file():
            shutil.rmtree(base, ignore_errors=True)
            (base / "proj").mkdir(parents=True)
            build_baseline(base / "proj", project_env(prefect_api))
            (base / "done").touch()
    return base / "proj"


def copy_baseline(baseline: Path, dest: Path) -> Path:
    """A private copy of the built micro project: git, DVC cache, artifacts and its Prefect home (paths there are
    derived from the project folder, so the copy's caches are its own)."""
    shutil.copytree(baseline, dest, symlinks=True)
    return dest


def test_dvc_repro_micro(tmp_path, prefect_api, micro_baseline):
    proj = copy_baseline(micro_baseline, tmp_path / "proj")
    env = project_env(prefect_api)
    p = yaml.safe_load((proj / "params.yaml").read_text())
    out = (micro_baseline.parent / "repro.log").read_text()
    for stage in STAGES:
        assert f"Running stage '{stage}'" in out
    report = json.loads((proj / "metrics" / "report.json").read_text())
    assert list(report) == [REAL, MATCHED, "synthetic (id3)", RATIO]
    for row in rows_of(report).values():
        r = row["benchmarks"]["lfw_heldout"]
        assert 0.0 <= r["accuracy"] <= 1.0 and r["pairs"] == 40 and r["folds"] == 10
        assert row["average_accuracy"] == r["accuracy"] and row["chosen_epoch"] == 1
    assert report[REAL]["identities"] == 12
    # the size-matched real row: as many real identities and images as the packaged synthetic set
    synth_manifest = pd.read_parquet(proj / "artifacts" / "dataset" / "manifest.parquet")
    matched, synth = report[MATCHED], report["synthetic (id3)"]
    assert (matched["images"], matched["identities"]) == (len(synth_manifest), synth_manifest["label"].nunique())
    assert (matched["images"], matched["identities"]) == (synth["images"], synth["identities"])
    assert matched["size_match"]["matched"] and matched["size_match"]["shortfall"] == {"images": 0, "identities": 0}
    ratio = report[RATIO]
    assert ratio["benchmark"] == "lfw_heldout" and ratio["matched_real"] == MATCHED and ratio["size_matched"] is True
    assert ratio["ratio"] == synth["benchmarks"]["lfw_heldout"]["accuracy"] / matched["benchmarks"]["lfw_heldout"]["accuracy"]
    for fr in ("fr_real", "fr_real_matched", "fr_synthetic"):
        d = json.loads((proj / "artifacts" / fr / "run.json").read_text())["training"]["distributed"]
        assert d["world_size"] == 2 and d["steps_per_rank"][0] == d["steps_per_rank"][1] > 0, d
        assert len(set(d["param_digest_per_rank"])) == 1, d
    md = (proj / "metrics" / "report.md").read_text()
    assert "| real (LFW train split) |" in md and "lfw_heldout" in md and f"| {MATCHED} |" in md
    assert "Synthetic / size-matched real accuracy on lfw_heldout:" in md and "Real baseline:" in md
    q = json.loads((proj / "metrics" / "quality.json").read_text())
    for model in ("judge (dlib)", "encoder"):
        assert q["synthetic"][model]["identities"] == (3 if "judge" in model else 4)
        assert 0 <= q["calibration_lfw_heldout"][model]["accuracy"] <= 1
        assert "privacy_max_cos_to_real_max" in q["synthetic"][model] and "unique_identities_r0.3" in q["real"][model]
    assert q["real"]["pose"]["faces_found"] > 0.9  # real aligned faces are re-detected
    # the real baseline at the synthetic images' resolution (16 px here): the detector on every real face, the
    # judge on the judged identities, downsampled; the ratios against it and against the 112 px faces
    res = p["generator"]["resolution"]
    assert q["synthetic"]["faces_found_resolution"] == q["real"]["faces_found_resolution"] == res
    assert q["synthetic"]["faces_found"] == q["synthetic"]["pose"]["faces_found"] and 0 <= q["real"]["faces_found"] <= 1
    assert q["real"]["faces_found_full_resolution"] == q["real"]["pose"]["faces_found"] and q["real"]["full_resolution"] == 112
    low = q["real"]["judge (dlib) at synthetic resolution"]
    assert low["resolution"] == res and low["identities"] == 3 and low["images"] == q["real"]["judge (dlib)"]["images"]
    base = q["real_baseline"]
    assert base["real_at_synthetic_resolution"]["resolution"] == res and base["real_at_full_resolution"]["resolution"] == 112
    assert base["real_at_synthetic_resolution"]["same_identity_pairs_accepted"] == low["intra_pairs_same_person"]
    assert base["synthetic"]["different_identity_pairs_accepted"] == q["synthetic"]["judge (dlib)"]["inter_pairs_same_person"]
    assert base["ratios"]["baseline"] == "real_at_synthetic_resolution" and base["ratios"]["real_resolution"] == res
    assert base["ratios_vs_full_resolution"]["real_resolution"] == 112
    for png in ("sample_grid", "cosine_hist", "privacy_hist"):
        assert (proj / "plots" / f"{png}.png").read_bytes()[:4] == b"\x89PNG"
    roc = (proj / "plots" / "roc.csv").read_text().splitlines()
    assert roc[0] == "benchmark,training_set,threshold,fpr,tpr" and len(roc) == 1 + 3 * 400  # 3 training sets
    assert (proj / "artifacts" / "generator" / "pipeline" / "model_index.json").is_file()
    counts = json.loads((proj / "artifacts" / "align" / "counts.json").read_text())
    assert counts["accepted"] + counts["rejected"] == counts["inputs"]
    assert counts["train_images"] + counts["eval_images"] == counts["accepted"] and counts["train_identities"] == 12
    # nothing changed (and the copy is a different folder): a no-op
    out = run(["dvc", "repro"], proj, env)
    assert "Running stage" not in out
    # an ablation is a DVC experiment: variant (c) changes sample.* and reruns sample and what follows it,
    # nothing upstream; the table is read from the experiment's git ref
    out = run(["dvc", "exp", "run", "-n", "id3-beta0", "-S", "sample.beta=0"], proj, env)
    ran = {s for s in STAGES if f"Running stage '{s}'" in out}
    assert {"sample", "evaluate"} <= ran <= {"sample", "package", "train_fr", "train_fr_matched", "evaluate"}, out
    exp_quality = json.loads((proj / "metrics" / "quality.json").read_text())
    run(["git", "checkout", "--", "params.yaml", "dvc.lock", "metrics", "plots"], proj, env)
    run(["dvc", "checkout", "--quiet"], proj, env)
    run([sys.executable, "-m", "flows.ablation"], proj, env)
    table = json.loads((proj / "metrics" / "ablation.json").read_text())
    assert [r["variant"][:3] for r in table["rows"]] == ["(a)", "(c)"]
    assert table["missing"] == ["id3-no-id-loss", "id3-random-anchors"]
    a, c = table["rows"]
    assert c["overrides"] == {"sample.beta": 0} and a["overrides"] == {}
    assert a["lfw_heldout_accuracy"] == report["synthetic (id3)"]["benchmarks"]["lfw_heldout"]["accuracy"]
    assert c["judge_consistency_mean_cos"] == exp_quality["synthetic"]["judge (dlib)"]["consistency_mean_cos_to_centre"]
    assert "| (c) beta = 0 (no reversed term) |" in (proj / "metrics" / "ablation.md").read_text()
    # a .bin dropped into the benchmarks folder reruns evaluate alone and becomes a report column (here the
    # held-out pairs again, so its figures must equal lfw_heldout's exactly: reader and builder agree)
    shutil.copy(proj / "artifacts" / "evaluate" / "lfw_heldout.bin", proj / "benchmarks" / "lfw.bin")
    out = run(["dvc", "repro"], proj, env)
    assert {s for s in STAGES if f"Running stage '{s}'" in out} == {"evaluate"}, out
    report = json.loads((proj / "metrics" / "report.json").read_text())
    for row in rows_of(report).values():
        assert set(row["benchmarks"]) == {"lfw_heldout", "lfw"}
        assert row["benchmarks"]["lfw"] == row["benchmarks"]["lfw_heldout"]
    run(["git", "add", "-A"], proj, env)
    run(["git", "commit", "-qm", "lfw.bin"], proj, env)

    check_kill_and_rerun(proj, env)
    check_dataset_product(proj, env, p)


def test_method_experiments(tmp_path, prefect_api, micro_baseline):
    """Issue 6: one parameter selects CemiFace or ID-Booth; each experiment retrains the generator and reruns
    what follows it (never align, the encoder or the real-data FR model; the size-matched real model follows the
    dataset's size), and the method table gets a row per method under the same FR recipe. ID-Booth's dataset is the
    augmented real set."""
    proj = copy_baseline(micro_baseline, tmp_path / "proj")
    env = project_env(prefect_api)
    report = json.loads((proj / "metrics" / "report.json").read_text())
    rows = {}
    for method, pipeline, name in (("cemiface", "CemiFacePipeline", "synthetic (cemiface)"),
                                   ("idbooth", "IDBoothPipeline", "real + generated (idbooth)")):
        out = run(["dvc", "exp", "run", "-n", f"method-{method}", "-S", f"generator.method={method}"], proj, env)
        ran = {s for s in STAGES if f"Running stage '{s}'" in out}
        assert ran == {"train_generator", "sample", "package", "train_fr", "train_fr_matched", "evaluate"}, out
        assert json.loads((proj / "artifacts" / "generator" / "pipeline" / "model_index.json").read_text())["_class_name"] == pipeline
        if method == "cemiface":
            assert json.loads((proj / "artifacts" / "generator" / "run.json").read_text())["training"]["steps"] == 6
        rows[method] = json.loads((proj / "metrics" / "report.json").read_text())
        assert list(rows[method]) == [REAL, MATCHED, name, RATIO]
        assert rows[method][REAL] == report[REAL]  # the same real baseline, not retrained
        assert rows[method][RATIO]["synthetic"] == name
        assert json.loads((proj / "artifacts" / "sample" / "run.json").read_text())["method"] == method
        if method == "idbooth":
            check_augmented_set(proj)
            # 4 people x (6 real + 2 generated) images: the real split's people have 6 photos, so 8 images short
            assert rows[method][MATCHED]["size_match"]["shortfall"] == {"images": 8, "identities": 0}
            assert rows[method][RATIO]["size_matched"] is False
        run(["git", "reset", "-q", "--", "params.yaml", "dvc.lock", "metrics", "plots"], proj, env)
        run(["git", "checkout", "--", "params.yaml", "dvc.lock", "metrics", "plots"], proj, env)
        run(["dvc", "checkout", "--quiet"], proj, env)
    run([sys.executable, "-m", "flows.ablation", "--study", "methods"], proj, env)
    table = json.loads((proj / "metrics" / "methods.json").read_text())
    assert [(r["method"], r["training_set"]) for r in table["rows"]] == [
        ("id3", "synthetic (id3)"), ("cemiface", "synthetic (cemiface)"), ("idbooth", "real + generated (idbooth)")]
    assert table["missing"] == [] and len({r["fr_recipe"] for r in table["rows"]}) == 1
    assert table["rows"][1]["average_accuracy"] == rows["cemiface"]["synthetic (cemiface)"]["average_accuracy"]
    assert table["rows"][2]["average_accuracy"] == rows["idbooth"]["real + generated (idbooth)"]["average_accuracy"]
    md = (proj / "metrics" / "methods.md").read_text()
    assert "| synthetic (cemiface) |" in md and "| real + generated (idbooth) |" in md and "| real (LFW train split) |" in md
    assert "not comparable" not in md


def check_augmented_set(proj: Path) -> None:
    """ID-Booth's product: each personalised person's real training faces and its renders under one label."""
    ds = proj / "artifacts" / "dataset"
    m = pd.read_parquet(ds / "manifest.parquet")
    align = pd.read_parquet(proj / "artifacts" / "align" / "manifest.parquet")
    gen, real = m[m["source"] == "generated"], m[m["source"] == "real"]
    assert len(gen) == 8 and set(gen["prompt"].str[:19]) == {"photo of sks person"}
    assert set(real["real_label"]) == set(gen["real_label"]) and len(set(real["real_label"])) == 4
    per_person = align[align["split"] == "train"].groupby("label").size()
    assert len(real) == int(per_person[sorted(set(real["real_label"]))].sum())  # every real face of those people
    assert (m.groupby("label")["real_label"].nunique() == 1).all()  # one label, one real person
    counts = json.loads((ds / "counts.json").read_text())
    assert counts["real_images_out"] == len(real) and counts["generated_images_out"] == len(gen)
    assert counts["aligned"] == gen["aligned"].astype(float).mean() and real["aligned"].isna().all()
    assert counts["dropped"]["privacy_encoder"] == counts["dropped"]["privacy_judge"] == 0  # real people by design
    card = (ds / "README.md").read_text()
    assert "augmented face-recognition dataset (ID-Booth)" in card and "**Real people.**" in card


def check_kill_and_rerun(proj: Path, env: dict) -> None:
    """Issue 8: align and package killed with SIGKILL at a random point of their work, nothing cached; then
    rerun. Only complete files were ever visible, and the rerun's outputs equal the uninterrupted run's."""
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    for stage, folder in (("align", "align"), ("package", "dataset")):
        out = proj / "artifacts" / folder
        ref = output_files(out)
        timing = out / "timing.json"  # the uninterrupted run's working time (a log beside the outputs)
        work = json.loads(timing.read_text())["seconds"] if timing.is_file() else 5.0
        shutil.rmtree(out)  # as dvc repro does before it runs a stage
        fresh = {**env, "SYNTHFACE_PREFECT_HOME": str(proj.parent / f"prefect-kill-{stage}")}  # a new home: nothing cached
        proc = subprocess.Popen([sys.executable, "-m", "flows", stage], cwd=proj, env=fresh, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # its own process group
        while not out.exists() and proc.poll() is None:  # the flow has started its work
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 0.9) * work)
        assert proc.poll() is None, f"{stage} finished before the kill (seed {seed})"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        visible = {k: v for k, v in output_files(out).items() if not k.startswith(".")}
        partial = [k for k, v in visible.items() if ref.get(k) != v]
        assert not partial, f"{stage} killed (seed {seed}) left partial outputs visible: {partial}"
        run([sys.executable, "-m", "flows", stage], proj, fresh)
        assert output_files(out) == ref, f"{stage}: the rerun after a kill (seed {seed}) differs from the uninterrupted run"


def check_dataset_product(proj: Path, env: dict, p: dict) -> None:
    """Issue 4 on the micro run: the package outputs, deterministic shards, RecordIO / ImageFolder export and
    import, and a versioned release pulled by a consumer repository with dvc get / import / dvc.api."""
    import hashlib

    import pandas as pd
    import torch
    import webdataset as wds
    import wids

    from tasks.interchange import read_imagefolder, read_recordio

    ds = proj / "artifacts" / "dataset"
    counts = json.loads((ds / "counts.json").read_text())
    m, rej = pd.read_parquet(ds / "manifest.parquet"), pd.read_parquet(ds / "rejects.parquet")
    plan = pd.read_parquet(proj / "artifacts" / "sample" / "plan.parquet")
    assert sorted(m["key"].tolist() + rej["key"].tolist()) == sorted(plan["key"])  # nothing lost
    assert counts["images_out"] == len(m) and sum(counts["dropped"].values()) == len(rej)
    assert rej["reason"].value_counts().to_dict() == {k: v for k, v in counts["dropped"].items() if v}
    for col in ("key", "shard", "identity", "anchor", "seed", "yaw", "pitch", "roll", "label", "consistency",
                "max_cos_real_encoder", "max_cos_real_judge", "face_found"):
        assert col in m.columns, col
    priv = pd.read_parquet(ds / "privacy.parquet")
    assert len(priv) == p["sample"]["num_identities"] and priv["max_cos_real_judge"].between(-1, 1).all()
    assert not (m["max_cos_real_encoder"] >= counts["privacy"]["thresholds"]["encoder"]).any()
    shards = json.loads((ds / "shards.json").read_text())
    for s in shards:
        assert hashlib.sha256((ds / s["shard"]).read_bytes()).hexdigest() == s["sha256"]
    card = (ds / "README.md").read_text()
    for section in ("## Filters", "## Privacy audit", "## Provenance", "## Licence", "## Intended and out-of-scope uses",
                    "sample_grid.png", "privacy_hist.png"):
        assert section in card, section
    for png in ("sample_grid.png", "privacy_hist.png"):
        assert (ds / png).read_bytes()[:4] == b"\x89PNG"
    # random access through the wids index: sample i is manifest row i
    w = wids.ShardListDataset(str(ds / "index.wids.json"), transformations=[])  # raw bytes, no decoding
    assert len(w) == len(m) and w[len(m) - 1]["__key__"] == m["key"].iloc[-1]
    # a release: local DVC remote, semantic tag; a consumer repository pulls it three ways
    remote = proj.parent / "dvc-remote"
    run(["dvc", "remote", "modify", "local", "url", str(remote)], proj, env)  # absolute: consumers resolve it
    run(["git", "add", ".dvc/config"], proj, env)
    run(["git", "commit", "-qm", "remote"], proj, env)
    out = run([sys.executable, "-m", "flows", "release", "--bump", "minor"], proj, env)
    assert '"version": "0.1.0"' in out
    assert run(["git", "tag", "--list"], proj, env).split() == ["v0.1.0"]
    r = subprocess.run([sys.executable, "-m", "flows", "release", "--version", "0.1.0"], cwd=proj, env=env, capture_output=True, text=True)
    assert r.returncode == 2 and "already exists" in r.stderr
    consumer = proj.parent / "consumer"
    consumer.mkdir()
    run(["git", "init", "-q"], consumer, env)
    run(["dvc", "init", "-q"], consumer, env)
    run(["dvc", "import", str(proj), "artifacts/dataset", "-o", "synthface", "--rev", "v0.1.0"], consumer, env)
    run(["dvc", "get", str(proj), "artifacts/dataset/shards.json", "-o", "got_shards.json", "--rev", "v0.1.0"], consumer, env)
    assert json.loads((consumer / "got_shards.json").read_text()) == shards
    code = ("import dvc.api, json; print(json.dumps(json.loads(dvc.api.read('artifacts/dataset/counts.json', "
            f"repo={str(proj)!r}, rev='v0.1.0'))['images_out']))")
    assert run([sys.executable, "-c", code], consumer, env).strip() == str(counts["images_out"])
    pulled = consumer / "synthface"
    for s in shards:  # checksums of what the consumer received
        assert hashlib.sha256((pulled / s["shard"]).read_bytes()).hexdigest() == s["sha256"]
    urls = [str(pulled / s["shard"]) for s in shards]
    stream = wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode("torchrgb").to_tuple("png", "cls")
    seen = 0
    for x, y in torch.utils.data.DataLoader(stream, batch_size=4):
        assert x.dtype == torch.float32 and x.shape[1:] == (3, p["generator"]["resolution"], p["generator"]["resolution"])
        seen += len(y)
    assert seen == counts["images_out"]

    # same inputs -> same bytes: check_kill_and_rerun packaged again (after a kill) to identical files
    # export, then import: same images and labels
    images = {s["__key__"]: s for sh in shards for s in wds.WebDataset(str(ds / sh["shard"]), shardshuffle=False, empty_check=False)}
    by_label = sorted((int(s["cls"]), k) for k, s in images.items())
    run([sys.executable, "-m", "flows", "export", "--format", "recordio", "--out", str(proj / "exp_rec")], proj, env)
    got = list(read_recordio(proj / "exp_rec" / "train"))
    assert got == [(label, images[k]["png"]) for label, k in by_label]
    run([sys.executable, "-m", "flows", "export", "--format", "imagefolder", "--out", str(proj / "exp_tree")], proj, env)
    tree = sorted((label, path.stem, path.read_bytes()) for label, _, path in read_imagefolder(proj / "exp_tree"))
    assert tree == sorted((label, k, images[k]["png"]) for label, k in by_label)

    # import: the real training faces exported as RecordIO come back through align, pre-aligned, untouched
    from tasks.interchange import export_recordio
    from tasks.shards import read_tar
    am = pd.read_parquet(proj / "artifacts" / "align" / "manifest.parquet")
    train = am[am["split"] == "train"].sort_values(["label", "key"])
    faces = {s["__key__"]: s["jpg"] for sh in train["shard"].unique() for s in read_tar(proj / "artifacts" / "align" / sh)}
    export_recordio(((int(label), faces[k]) for label, k in zip(train["label"], train["key"])), proj / "imported" / "train")
    p2 = json.loads(json.dumps(p))
    p2["align"].update({"train_source": "recordio:imported/train", "pre_aligned": True})
    (proj / "params-import.yaml").write_text(yaml.safe_dump(p2, sort_keys=False))
    run([sys.executable, "-m", "flows", "align", "--params", "params-import.yaml"], proj, env)
    am2 = pd.read_parquet(proj / "artifacts" / "align" / "manifest.parquet")
    tr2 = am2[am2["split"] == "train"].sort_values("key")
    assert len(tr2) == len(train) and tr2["identity"].nunique() == train["label"].nunique()
    got = {s["__key__"]: s["jpg"] for sh in tr2["shard"].unique() for s in read_tar(proj / "artifacts" / "align" / sh)}
    assert sorted(got.values()) == sorted(faces.values())  # aligned JPEGs taken as they are, no re-detection
    assert (am2["split"] == "eval").sum() == (am["split"] == "eval").sum()  # evaluation stays LFW's


def test_stale_blocks_and_shards_are_neither_packaged_nor_kept(tmp_path, prefect_api, micro_baseline):
    """An earlier, larger run's extra sampling block and align shard in the stage folders: package reads the
    blocks its plan names (the set it writes is unchanged), and sample and align remove the files they did not
    write, so DVC never hashes them as outputs."""
    proj = copy_baseline(micro_baseline, tmp_path / "proj")
    env = project_env(prefect_api)
    art = proj / "artifacts"
    data = lambda: {k: v for k, v in output_files(art / "dataset").items()  # noqa: E731  (run.json digests the folder)
                    if k.endswith(".tar") or k in ("shards.json", "manifest.parquet", "counts.json")}
    before = data()
    block, shard = art / "sample" / "block-000999.tar", art / "align" / "faces-train-000999.tar"
    shutil.copy2(art / "sample" / "block-000000.tar", block)
    shutil.copy2(sorted((art / "align").glob("faces-train-*.tar"))[0], shard)
    run([sys.executable, "-m", "flows", "package"], proj, env)
    assert data() == before  # the stale block's renders were not packaged
    run([sys.executable, "-m", "flows", "sample"], proj, env)
    run([sys.executable, "-m", "flows", "align"], proj, env)
    assert not block.exists() and not shard.exists()
