"""WebDataset shards: deterministic bytes, readable by webdataset, keys validated."""
import webdataset as wds
import pytest

from tasks.shards import read_tar, write_shards


def samples(n):
    return [{"__key__": f"s{i:04d}", "png": bytes([i % 256]) * 50, "cls": i % 3, "json": {"i": i}} for i in range(n)]


def test_same_input_same_bytes(tmp_path):
    a = write_shards(samples(25), tmp_path / "a", "x", 10)
    b = write_shards(samples(25), tmp_path / "b", "x", 10)
    assert [s["count"] for s in a] == [10, 10, 5]
    assert [s["sha256"] for s in a] == [s["sha256"] for s in b]
    assert not list((tmp_path / "a").glob(".*"))  # no temporary file left behind
    got = list(read_tar(tmp_path / "a" / "x-000001.tar"))
    assert got[0]["__key__"] == "s0010" and got[0]["cls"] == b"1"
    ds = wds.WebDataset(str(tmp_path / "a" / "x-{000000..000002}.tar"), shardshuffle=False, empty_check=False).decode()
    rows = list(ds)
    assert len(rows) == 25 and rows[3]["json"] == {"i": 3} and rows[3]["cls"] == 0


def test_dotted_key_refused(tmp_path):
    with pytest.raises(ValueError, match="must not contain"):
        write_shards([{"__key__": "a.b", "png": b"x"}], tmp_path, "x", 10)
