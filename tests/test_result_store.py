"""Cached task results are data, sealed: a planted or altered record is a cache miss, never code that runs."""
import base64
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from tasks.io import Blob


def test_data_serializer_round_trips_what_tasks_return_and_refuses_the_rest():
    from flows.result_store import DataSerializer
    s = DataSerializer()
    value = ({"jpg": b"\xff\xd8 bytes", "yaw": np.float32(0.25), "n": np.int64(7), "ok": True, "none": None,
              "nan": float("nan"), "keys": np.array(["a", "bb"]), "emb": np.random.default_rng(0).random((3, 4), np.float32)},
             [{"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "h": torch.ones(2, dtype=torch.bfloat16)}],
             {"unet/x.bin": Blob("ab" * 32, 10), 3: Path("a/b")}, 10 ** 30, "text")
    back = s.loads(s.dumps(value))
    assert isinstance(back, tuple) and back[0]["jpg"] == value[0]["jpg"] and back[0]["yaw"].dtype == np.float32
    assert back[0]["n"] == 7 and back[0]["n"].dtype == np.int64 and back[0]["ok"] is True and back[0]["none"] is None
    assert np.isnan(back[0]["nan"]) and back[0]["keys"].tolist() == ["a", "bb"] and np.array_equal(back[0]["emb"], value[0]["emb"])
    assert torch.equal(back[1][0]["w"], value[1][0]["w"]) and back[1][0]["h"].dtype == torch.bfloat16
    assert torch.equal(back[1][0]["h"], value[1][0]["h"])
    assert back[2] == value[2] and back[3:] == value[3:]
    with pytest.raises(TypeError):
        s.dumps({"f": lambda: 0})
    with pytest.raises(ValueError):
        s.dumps(np.array([object()], dtype=object))  # object arrays would need pickle
    with pytest.raises(ValueError):
        s.loads(base64.b64encode(pickle.dumps({"a": 1})))


class _Plant:
    """A pickle that writes a marker file when loaded."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "code ran"))


def test_a_planted_or_altered_record_is_a_miss_not_code(tmp_path, prefect_harness):
    from prefect import flow
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH

    from flows.caching import cached_task
    calls = []

    @cached_task()
    def double(path: Path) -> dict:
        calls.append(1)
        return {"n": 2 * len(path.read_bytes()), "arr": np.arange(3)}

    @flow
    def run(path: Path):
        return double(path, return_state=True)

    f = tmp_path / "input.txt"
    f.write_bytes(b"abc")
    store = Path(PREFECT_LOCAL_STORAGE_PATH.value())
    before = set(store.rglob("*")) if store.exists() else set()
    assert run(f).result()["n"] == 6 and len(calls) == 1
    assert run(f).name == "Cached" and len(calls) == 1
    (record,) = [p for p in set(store.rglob("*")) - before if p.is_file()]
    good = record.read_bytes()
    assert good.startswith(b"synthface-sealed-v1\n") and b'"type":"synthface-data"' in good

    # Prefect's own record format, pickle serializer, a payload that runs code: written by someone else
    from prefect.serializers import PickleSerializer
    from prefect._internal.result_records import ResultRecord, ResultRecordMetadata
    marker = tmp_path / "pwned"
    planted = ResultRecord(metadata=ResultRecordMetadata(serializer=PickleSerializer(), storage_key=str(record)),
                           result=_Plant(marker)).serialize()
    for attack in (planted, good[:-3] + b"}}}", good.replace(b"synthface-data", b"pickle")):
        record.write_bytes(attack)
        state = run(f)
        assert state.name != "Cached" and state.result()["n"] == 6 and not marker.exists()
    assert len(calls) == 4
    assert run(f).name == "Cached" and len(calls) == 4  # the recomputed record is sealed again
