"""Shared fixtures: the real LFW files (SYNTHFACE_LFW_DIR or ../shared/datasets/lfw), a Prefect test harness,
and a tiny sampling project with its reference sample outputs."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def lfw_dir() -> Path:
    d = Path(os.environ.get("SYNTHFACE_LFW_DIR", ROOT.parent / "shared" / "datasets" / "lfw"))
    if not (d / "lfw-deepfunneled.zip").is_file():
        pytest.fail(f"LFW not found in {d}: set SYNTHFACE_LFW_DIR")
    return d


def pytest_collection_modifyitems(items):
    """The end-to-end DAG test first: it builds the micro baseline (the longest piece), so under xdist (`make test`:
    -n 2) it starts at once while the other tests share the second worker; the method experiments, which start
    from the same baseline, last, by when it is built."""
    def order(item):
        return 0 if "test_dvc_repro_micro" in item.nodeid else 2 if "test_method_experiments" in item.nodeid else 1
    items.sort(key=order)


@pytest.fixture(scope="session")
def lfw_files() -> Path:
    return lfw_dir()


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory):
    import flows  # noqa: F401  (sets the offline Prefect environment)
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings
    from prefect.testing.utilities import prefect_test_harness
    # results in this session's temporary folder, not the checkout's .prefect/: a second run of the suite in the
    # same checkout must not find the first run's cached results
    with temporary_settings({PREFECT_LOCAL_STORAGE_PATH: tmp_path_factory.mktemp("prefect-results")}):
        with prefect_test_harness(server_startup_timeout=180):  # a cold, busy 2-core machine needs more than 30 s
            yield


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory):
    """One Prefect server for the tests' stage subprocesses (flows/server.py): a stage process on its own
    starts an ephemeral server (25-35 s here); pointed at this one it starts in about 3 s."""
    from flows.server import prefect_server
    with prefect_server(tmp_path_factory.mktemp("prefect-server")) as url:
        yield url


def without_prefect(env) -> dict:
    from flows.server import without_prefect as strip
    return strip(env)


def output_files(folder: Path) -> dict:
    """name -> bytes of a stage's outputs, without its timing log and lock files (not outputs)."""
    from tasks.io import not_output
    return {f.name: f.read_bytes() for f in sorted(Path(folder).iterdir()) if not not_output(f.name)}


SAMPLE = [sys.executable, "-m", "flows", "sample"]


def tiny_sampling_project(proj: Path, resolution: int = 16) -> None:
    """flows/tasks/models and params, with tiny real generator (`resolution` px), encoder and attribute-pool
    artifacts."""
    import numpy as np
    import pandas as pd
    import torch
    for k in ("flows", "tasks", "models"):
        shutil.copytree(ROOT / k, proj / k, ignore=shutil.ignore_patterns("__pycache__"))
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p["sample"].update({"num_identities": 6, "embeddings_per_identity": 2, "images_per_embedding": 1, "anchor_iters": 10,
                        "privacy_threshold": 0.9, "num_inference_steps": 2, "id_weight": 0.0, "beta": 0.0, "block_size": 2,
                        "batch_size": 4})
    (proj / "params.yaml").write_text(yaml.safe_dump(p))
    from models.iresnet import IResNet
    from tasks.encoder import save_encoder
    from tasks.train_generator import build_pipeline
    torch.manual_seed(0)
    gp = {"method": "id3", "resolution": resolution, "unet": {"block_out_channels": [32, 32], "layers_per_block": 1, "attention_head_dim": 8,
                                     "norm_num_groups": 8}, "conditioner_dims": [32, 32], "num_train_timesteps": 1000}
    art = proj / "artifacts"
    build_pipeline(gp, embedding_dim=16).save_pretrained(art / "generator" / "pipeline")
    rng = np.random.default_rng(0)
    e = rng.standard_normal((12, 16))
    np.savez(art / "generator" / "real_stats.npz", embeddings=e / np.linalg.norm(e, axis=1, keepdims=True), labels=np.arange(12) // 3)
    save_encoder(IResNet((1, 1), (8, 16), 16, 16).eval(), {"kind": "iresnet", "arch": {
        "layers": [1, 1], "widths": [8, 16], "input_size": 16, "embedding_dim": 16}}, art / "encoder")  # loadable: guidance
    (art / "align").mkdir(parents=True)
    pd.DataFrame(rng.uniform(-1, 1, (20, 3)), columns=["yaw", "pitch", "roll"]).to_parquet(art / "align" / "attributes.parquet")


@pytest.fixture(scope="session")
def sampling(tmp_path_factory, prefect_api):
    """The tiny project after two concurrent sample runs on the default (threads) runner: (project, env,
    logs, reference output bytes). Tests that rerun sampling there compare with the reference."""
    proj = tmp_path_factory.mktemp("sampling") / "proj"
    tiny_sampling_project(proj)
    # the project's own Prefect home (flows/__init__.py) for results, the shared test server for the API
    env = {**without_prefect(os.environ), "PYTHONPATH": str(proj), "PREFECT_API_URL": prefect_api}
    runs = [subprocess.Popen(SAMPLE, cwd=proj, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    logs = [r.communicate(timeout=900)[0] for r in runs]
    assert [r.returncode for r in runs] == [0, 0], "\n".join(logs)
    return proj, env, "\n".join(logs), output_files(proj / "artifacts" / "sample")


def colour_faces(identities: int, per_identity: int, size: int = 32, seed: int = 0):
    """Tiny face-like training data: one colour per identity plus noise, as PNG WebDataset samples.
    Returns (samples for tasks.shards.write_shards, manifest DataFrame of key and label)."""
    import io
    import numpy as np
    import pandas as pd
    from PIL import Image
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 256, (identities, 3))
    samples, rows = [], []
    for c in range(identities):
        for j in range(per_identity):
            img = np.clip(colours[c] + rng.normal(0, 40, (size, size, 3)), 0, 255).astype(np.uint8)
            buf = io.BytesIO(); Image.fromarray(img).save(buf, format="PNG")
            samples.append({"__key__": f"c{c}_{j}", "png": buf.getvalue(), "cls": c})
            rows.append({"key": f"c{c}_{j}", "label": c})
    return samples, pd.DataFrame(rows)
