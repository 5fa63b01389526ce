"""End to end: `dvc repro` of the whole DAG on a micro configuration of real LFW faces, in a temporary
copy of the project. Then: a second repro is a no-op; changing sample.* reruns only sample and what
follows it; a .bin dropped into the benchmarks folder becomes a report column (here the held-out pairs
again, so its figures must equal lfw_heldout's exactly: reader and builder agree)."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import ROOT, lfw_dir

MICRO = {
    "align": {"max_train_people": 12, "min_images_per_person": 6, "max_images_per_person": 6, "max_pairs_per_fold": 10,
              "chunk_size": 64, "shard_size": 40},
    "encoder": {"arch": {"layers": [1, 1], "widths": [16, 32], "input_size": 32, "embedding_dim": 32},
                "epochs": 2, "batch_size": 16, "milestones": [1], "warmup_steps": 2},
    "generator": {"resolution": 16, "unet": {"block_out_channels": [32, 32], "layers_per_block": 1,
                                             "attention_head_dim": 8, "norm_num_groups": 8},
                  "conditioner_dims": [32, 32, 32], "steps": 4, "batch_size": 8, "checkpoint_every": 2},
    "sample": {"num_identities": 4, "embeddings_per_identity": 2, "images_per_embedding": 1, "anchor_iters": 20,
               "num_inference_steps": 3, "block_size": 2, "batch_size": 8},
    "package": {"shard_size": 5},
    "train_fr": {"arch": {"layers": [1, 1], "widths": [16, 32], "input_size": 32, "embedding_dim": 32},
                 "epochs": 1, "batch_size": 4, "milestones": [1], "warmup_steps": 1},
    "evaluate": {"judge_max_identities": 3, "hist_pairs": 200, "grid_identities": 2, "grid_images": 2},
}


STAGES = ("align", "train_encoder", "train_generator", "sample", "package", "train_fr_real", "train_fr", "evaluate")


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


def test_dvc_repro_micro(tmp_path):
    proj = tmp_path / "proj"
    keep = ["flows", "tasks", "models", "benchmarks", "dvc.yaml", "params.yaml", "data.dvc", ".dvc/config", ".dvc/plots",
            ".dvcignore", ".gitignore"]
    for k in keep:
        src = ROOT / k
        if src.is_dir():
            shutil.copytree(src, proj / k, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            (proj / k).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, proj / k)
    p = merge(yaml.safe_load((ROOT / "params.yaml").read_text()), MICRO)
    (proj / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "SYNTHFACE_LFW_DIR": str(lfw_dir())}
    env.pop("SYNTHFACE_PREFECT_HOME", None)
    run(["git", "init", "-q"], proj, env)
    run([sys.executable, "-m", "flows", "fetch-data"], proj, env)
    run(["dvc", "add", "-q", "data"], proj, env)
    out = run(["dvc", "repro"], proj, env)
    for stage in STAGES:
        assert f"Running stage '{stage}'" in out
    report = json.loads((proj / "metrics" / "report.json").read_text())
    assert list(report) == ["real (LFW train split)", "synthetic (id3)"]
    for row in report.values():
        r = row["benchmarks"]["lfw_heldout"]
        assert 0.0 <= r["accuracy"] <= 1.0 and r["pairs"] == 40 and r["folds"] == 10
        assert row["average_accuracy"] == r["accuracy"] and row["chosen_epoch"] == 1
    assert report["real (LFW train split)"]["identities"] == 12
    md = (proj / "metrics" / "report.md").read_text()
    assert "| real (LFW train split) |" in md and "lfw_heldout" in md
    q = json.loads((proj / "metrics" / "quality.json").read_text())
    for model in ("judge (dlib)", "encoder"):
        assert q["synthetic"][model]["identities"] == (3 if "judge" in model else 4)
        assert 0 <= q["calibration_lfw_heldout"][model]["accuracy"] <= 1
        assert "privacy_max_cos_to_real_max" in q["synthetic"][model] and "unique_identities_r0.3" in q["real"][model]
    assert q["real"]["pose"]["faces_found"] > 0.9  # real aligned faces are re-detected
    for png in ("sample_grid", "cosine_hist", "privacy_hist"):
        assert (proj / "plots" / f"{png}.png").read_bytes()[:4] == b"\x89PNG"
    roc = (proj / "plots" / "roc.csv").read_text().splitlines()
    assert roc[0] == "benchmark,training_set,threshold,fpr,tpr" and len(roc) == 1 + 2 * 400
    assert (proj / "artifacts" / "generator" / "pipeline" / "model_index.json").is_file()
    counts = json.loads((proj / "artifacts" / "align" / "counts.json").read_text())
    assert counts["accepted"] + counts["rejected"] == counts["inputs"]
    assert counts["train_images"] + counts["eval_images"] == counts["accepted"] and counts["train_identities"] == 12
    # nothing changed: a no-op
    out = run(["dvc", "repro"], proj, env)
    assert "Running stage" not in out
    # a sample.* change reruns sample and what follows, nothing upstream; a new .bin reruns evaluate
    p["sample"]["seed"] = 1
    (proj / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    shutil.copy(proj / "artifacts" / "evaluate" / "lfw_heldout.bin", proj / "benchmarks" / "lfw.bin")
    out = run(["dvc", "repro"], proj, env)
    ran = {s for s in STAGES if f"Running stage '{s}'" in out}
    assert {"sample", "evaluate"} <= ran <= {"sample", "package", "train_fr", "evaluate"}
    report = json.loads((proj / "metrics" / "report.json").read_text())
    for row in report.values():
        assert set(row["benchmarks"]) == {"lfw_heldout", "lfw"}
        assert row["benchmarks"]["lfw"] == row["benchmarks"]["lfw_heldout"]
    # an ablation is a DVC experiment: run variant (c) and read the table from the experiment's git ref
    run(["git", "config", "user.name", "synthface-test"], proj, env)
    run(["git", "config", "user.email", "test@synthface.invalid"], proj, env)
    run(["git", "add", "-A"], proj, env)
    run(["git", "commit", "-qm", "baseline"], proj, env)
    out = run(["dvc", "exp", "run", "-n", "id3-beta0", "-S", "sample.beta=0"], proj, env)
    ran = {s for s in STAGES if f"Running stage '{s}'" in out}
    assert "sample" in ran and not ran & {"align", "train_encoder", "train_generator", "train_fr_real"}
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
