"""The README's consumer recipe, run as written on a packaged set: it reads images and labels, refuses a shard
whose sha256 differs from shards.json, and never unpickles a member a hostile shard adds."""
import io
import json
import pickle
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flows import ROOT
from tasks.shards import write_shards


def _recipe() -> str:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"the consumer recipe[^\n]*\n\n```python\n(.*?)```", text, re.S)
    assert block, "README: the consumer recipe block is missing"
    return block.group(1)


class _Plant:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "code ran"))


def _png(v) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), v, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _run(root: Path) -> list:
    scope = {}
    exec(_recipe().replace('"synthface-v0.1.0"', repr(str(root))), scope)
    return list(scope["dataset"])


def test_consumer_recipe_reads_verified_shards_and_decodes_only_images_and_labels(tmp_path):
    root = tmp_path / "synthface-v0.1.0"
    root.mkdir()
    samples = [{"__key__": f"id{i // 2}_{i}", "png": _png(10 * i), "cls": i // 2, "json": {"identity": i // 2}} for i in range(6)]
    infos = write_shards(samples, root, "synthface", 4)
    (root / "shards.json").write_text(json.dumps(infos))
    got = _run(root)
    assert [c for _, c in got] == [0, 0, 1, 1, 2, 2] and got[3][0].shape == (8, 8, 3) and got[3][0][0, 0, 0] == 30

    # a hostile member inside a sample of a released shard (its sha256 in shards.json too): never unpickled
    marker = tmp_path / "pwned"
    infos = write_shards([dict(samples[0], pyd=pickle.dumps(_Plant(marker)))] + samples[1:], root, "synthface", 4)
    (root / "shards.json").write_text(json.dumps(infos))
    with tarfile.open(root / infos[0]["shard"]) as t:
        assert f"{samples[0]['__key__']}.pyd" in t.getnames()
    assert [c for _, c in _run(root)] == [0, 0, 1, 1, 2, 2] and not marker.exists()

    # a shard that is not the released one
    data = bytearray((root / infos[1]["shard"]).read_bytes())
    data[600] ^= 0xFF  # one byte of the first member's data
    (root / infos[1]["shard"]).write_bytes(bytes(data))
    with pytest.raises(ValueError, match="synthface-000001.tar: sha256 does not match"):
        _run(root)
