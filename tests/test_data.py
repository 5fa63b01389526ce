"""Obtaining LFW: local copy with checksum, download from a local HTTP server, bad checksum refused."""
import functools
import hashlib
import http.server
import threading

import pytest

from tasks import lfw


@pytest.fixture()
def server(tmp_path):
    root = tmp_path / "site"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()


def test_download_verifies_checksum(tmp_path, server, lfw_files, monkeypatch):
    site, url = server
    files = {n: (lfw_files / n).read_bytes() for n in ("pairs.txt", "people.txt")}
    for n, b in files.items():
        (site / n).write_bytes(b)
    params = {"dir": "data/lfw", "url_base": url, "sha256": {n: hashlib.sha256(b).hexdigest() for n, b in files.items()}}
    monkeypatch.setenv("SYNTHFACE_LFW_DIR", str(tmp_path / "nowhere"))
    project = tmp_path / "proj"  # no shared folder beside it: the download path is taken
    out = lfw.obtain(params, project)
    assert {p.name for p in out.iterdir()} == set(files)
    assert (out / "pairs.txt").read_bytes() == files["pairs.txt"]
    lfw.verify(params, out)


def test_bad_checksum_leaves_nothing(tmp_path, server, monkeypatch):
    site, url = server
    (site / "people.txt").write_text("tampered\n")
    params = {"dir": "data/lfw", "url_base": url, "sha256": {"people.txt": "0" * 64}}
    monkeypatch.setenv("SYNTHFACE_LFW_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(lfw.DataError, match="people.txt: sha256 .* does not match"):
        lfw.obtain(params, tmp_path / "proj")
    assert list((tmp_path / "proj" / "data" / "lfw").iterdir()) == []


def test_missing_file_is_named(tmp_path):
    with pytest.raises(lfw.DataError, match="pairs.txt: missing"):
        lfw.verify({"sha256": {"pairs.txt": "0" * 64}}, tmp_path)


def test_local_copy_and_person_disjoint_selection(lfw_files):
    folds = lfw.parse_people(lfw_files / "people.txt")
    assert len(folds) == 10 and sum(sum(f.values()) for f in folds.values()) == 13233
    pairs = lfw.parse_pairs(lfw_files / "pairs.txt")
    assert len(pairs) == 6000 and sum(q.issame for q in pairs) == 3000
    p = {"train_folds": [1, 2], "eval_folds": [10], "min_images_per_person": 5, "max_images_per_person": 3,
         "max_train_people": 7, "max_pairs_per_fold": 4}
    train, ev = lfw.select(lfw_files / "people.txt", lfw_files / "pairs.txt", p)
    assert len(train) == 21 and len(ev) == 8
    assert [q.issame for q in ev] == [True, False] * 4  # interleaved: every contiguous fold is balanced
    with pytest.raises(lfw.DataError, match="not person-disjoint"):
        lfw.select(lfw_files / "people.txt", lfw_files / "pairs.txt", {**p, "train_folds": [10], "max_train_people": 10000})
