"""Prefect task caching keys on content: same bytes hit, changed bytes under the same path miss."""
from pathlib import Path


def test_cache_follows_file_bytes(tmp_path, prefect_harness):
    from prefect import flow, task

    from flows.caching import content_key

    calls = []

    @task(cache_key_fn=content_key, persist_result=True)
    def count_lines(path: Path, scale: int) -> int:
        calls.append(1)
        return len(path.read_text().splitlines()) * scale

    @flow
    def run(path: Path, scale: int):
        return count_lines(path, scale, return_state=True)

    f = tmp_path / "input.txt"
    f.write_text("a\nb\n")
    s1 = run(f, 2)
    assert s1.result() == 4 and len(calls) == 1
    s2 = run(f, 2)  # unchanged bytes: a cache hit, the task body does not run
    assert s2.is_completed() and s2.name == "Cached" and s2.result() == 4 and len(calls) == 1
    f.write_text("a\nb\nc\n")  # same path, new bytes: recomputed
    s3 = run(f, 2)
    assert s3.result() == 6 and len(calls) == 2 and s3.name != "Cached"
    moved = tmp_path / "elsewhere.txt"  # another path with the same bytes: still a hit
    moved.write_bytes(f.read_bytes())
    assert run(moved, 2).name == "Cached" and len(calls) == 2
    assert run(f, 3).result() == 9 and len(calls) == 3  # a parameter change misses too
