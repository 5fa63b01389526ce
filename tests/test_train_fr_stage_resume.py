"""The train_fr stage (`python -m flows train-fr`, a real subprocess) killed with SIGKILL after its second
epoch and run again: it resumes from the checkpoint of its last finished epoch under the Prefect home,
trains only the epochs after it, writes outputs equal to an uninterrupted run's, and removes the
checkpoint folder once they are written. A dataset the package filters left with one identity is refused
with what dropped the rest."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys

import yaml

from conftest import ROOT, colour_faces, output_files, without_prefect

TRAIN_FR = [sys.executable, "-m", "flows", "train-fr"]


def _project(proj, identities: int = 8):
    """flows/tasks/models, tiny train_fr params, and a packaged dataset of colour 'faces'."""
    import pandas as pd

    from tasks.shards import write_shards
    for k in ("flows", "tasks", "models"):
        shutil.copytree(ROOT / k, proj / k, ignore=shutil.ignore_patterns("__pycache__"))
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p["train_fr"].update({"arch": {"layers": [1, 1], "widths": [8, 16], "input_size": 32, "embedding_dim": 16},
                          "epochs": 4, "batch_size": 8, "milestones": [3], "warmup_steps": 2, "val_fraction": 0.25,
                          "val_max_pairs": 200, "val_every": 1})
    (proj / "params.yaml").write_text(yaml.safe_dump(p))
    samples, manifest = colour_faces(identities, 6)
    ds = proj / "artifacts" / "dataset"
    ds.mkdir(parents=True)
    infos = write_shards(samples, ds, "synthface", 12)
    manifest["shard"] = [i["shard"] for i in infos for _ in range(i["count"])]
    manifest.to_parquet(ds / "manifest.parquet")


def test_killed_train_fr_stage_resumes_from_its_last_epoch(tmp_path, prefect_api):
    proj = tmp_path / "proj"
    _project(proj)
    env = {**without_prefect(os.environ), "PYTHONPATH": str(proj), "PREFECT_API_URL": prefect_api}
    out = proj / "artifacts" / "fr_synthetic"
    whole = subprocess.run(TRAIN_FR, cwd=proj, env={**env, "SYNTHFACE_PREFECT_HOME": str(tmp_path / "home-whole")},
                           capture_output=True, text=True, timeout=600)
    assert whole.returncode == 0, whole.stdout + whole.stderr
    ref = output_files(out)
    shutil.rmtree(out)

    home = tmp_path / "home-killed"  # nothing cached: it really trains
    env = {**env, "SYNTHFACE_PREFECT_HOME": str(home)}
    run = subprocess.Popen(TRAIN_FR, cwd=proj, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           start_new_session=True)
    seen = ""
    for line in run.stdout:
        seen += line
        if re.search(r"epoch 2/4 ", line):
            os.killpg(run.pid, signal.SIGKILL)
            break
    run.wait(timeout=60)
    assert run.returncode == -signal.SIGKILL, seen
    ckpts = list((home / "checkpoints").glob("train_fr-*/checkpoint.pt"))
    assert len(ckpts) == 1, seen  # the epoch checkpoint, outside the stage's outputs

    again = subprocess.run(TRAIN_FR, cwd=proj, env=env, capture_output=True, text=True, timeout=600)
    log = again.stdout + again.stderr
    assert again.returncode == 0, log
    resumed = re.search(r"resumed from epoch (\d+)", log)
    assert resumed and int(resumed[1]) >= 2, log
    # nothing trained twice, nothing skipped
    assert re.findall(r"epoch (\d)/4 ", log) == [str(e) for e in range(int(resumed[1]) + 1, 5)], log
    assert output_files(out) == ref, "the resumed run's outputs differ from the uninterrupted run's"
    assert not list((home / "checkpoints").iterdir()), "the checkpoint folder outlived the stage's outputs"


def test_a_dataset_of_one_identity_is_refused_naming_the_filters(tmp_path, prefect_api):
    proj = tmp_path / "proj"
    _project(proj, identities=1)
    ds = proj / "artifacts" / "dataset"
    (ds / "counts.json").write_text(json.dumps({"dropped": {"privacy_judge": 224, "no_face": 0, "not_unique": 16}}))
    env = {**without_prefect(os.environ), "PYTHONPATH": str(proj), "PREFECT_API_URL": prefect_api}
    r = subprocess.run(TRAIN_FR, cwd=proj, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode != 0
    err = r.stdout + r.stderr
    assert "artifacts/dataset holds 1 identities (6 images)" in err and "privacy_judge 224, not_unique 16" in err, err
    assert not (proj / "artifacts" / "fr_synthetic").exists() or not any((proj / "artifacts" / "fr_synthetic").iterdir())
