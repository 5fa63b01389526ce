"""Shared fixtures: the real LFW files (SYNTHFACE_LFW_DIR or ../shared/datasets/lfw) and a Prefect test harness."""
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def lfw_dir() -> Path:
    d = Path(os.environ.get("SYNTHFACE_LFW_DIR", ROOT.parent / "shared" / "datasets" / "lfw"))
    if not (d / "lfw-deepfunneled.zip").is_file():
        pytest.fail(f"LFW not found in {d}: set SYNTHFACE_LFW_DIR")
    return d


@pytest.fixture(scope="session")
def lfw_files() -> Path:
    return lfw_dir()


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory):
    import flows  # noqa: F401  (sets the offline Prefect environment)
    from prefect.testing.utilities import prefect_test_harness
    with prefect_test_harness(server_startup_timeout=180):  # a cold, busy 2-core machine needs more than 30 s
        yield


def output_files(folder: Path) -> dict:
    """name -> bytes of a stage's outputs, without its timing log and lock files (not outputs)."""
    from tasks.io import not_output
    return {f.name: f.read_bytes() for f in sorted(Path(folder).iterdir()) if not not_output(f.name)}


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
