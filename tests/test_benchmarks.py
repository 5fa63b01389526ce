"""insightface .bin files: the restricted unpickler refuses code, accepts both bytes spellings, and a .bin
built from LFW pairs and aligned faces reads back to the same images and labels."""
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT
from tasks.align import make_detector, warp
from tasks.benchmarks import UnsafeBenchmarkFile, build_bin, decoded_batches, find_bins, read_bin, write_bin
from tasks.archives import ArchiveImages
from tasks.lfw import parse_pairs


class Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.bin"
    path.write_bytes(pickle.dumps(([Exploit(marker), b"x"], [True]), protocol=4))
    with pytest.raises(UnsafeBenchmarkFile, match=r"refused to load global (posix|os)\.system"):
        read_bin(path)
    assert not marker.exists()
    # numpy inside a .bin is refused too: the format holds only bytes and booleans
    path.write_bytes(pickle.dumps(([b"a", b"b"], [np.bool_(True)]), protocol=4))
    with pytest.raises(UnsafeBenchmarkFile, match="numpy"):
        read_bin(path)
    # the one allowed global, _codecs.encode, only as (str, 'latin1')
    path.write_bytes(b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x05\x00\x00\x00rot13\x86R]\x86.")
    with pytest.raises(UnsafeBenchmarkFile, match="latin1"):
        read_bin(path)


def test_both_bytes_spellings_and_shape_checks(tmp_path):
    for proto in (2, 4):  # protocol 2 from Python 3 spells bytes as _codecs.encode(str, 'latin1')
        path = tmp_path / f"p{proto}.bin"
        path.write_bytes(pickle.dumps(([b"\xff\x00a", b"b"], [False]), protocol=proto))
        bins, issame = read_bin(path)
        assert bins == [b"\xff\x00a", b"b"] and issame.tolist() == [False]
    path.write_bytes(pickle.dumps(([b"a", b"b", b"c"], [True]), protocol=4))
    with pytest.raises(ValueError, match="3 images for 1 pairs"):
        read_bin(path)
    path.write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="not a readable"):
        read_bin(path)


def _aligned_lfw(lfw_files, pairs):
    """Align the pairs' LFW photos with MTCNN, as the align stage does; LFW-layout relative names."""
    zf, det = ArchiveImages(lfw_files / "lfw-deepfunneled.zip"), make_detector("mtcnn")
    names = sorted({(q.name_a, q.idx_a) for q in pairs} | {(q.name_b, q.idx_b) for q in pairs})
    out = {}
    for n, i in names:
        img = np.asarray(Image.open(__import__("io").BytesIO(zf.read(f"lfw-deepfunneled/{n}/{n}_{i:04d}.jpg"))).convert("RGB"))
        face = max(det.detect([img])[0], key=lambda f: f[1])
        out[f"{n}/{n}_{i:04d}.jpg"] = warp(img, face[2])
    return out


def test_build_bin_from_lfw_pairs_round_trip(tmp_path, lfw_files):
    pairs = [q for q in parse_pairs(lfw_files / "pairs.txt") if q.fold == 10][:3] + \
            [q for q in parse_pairs(lfw_files / "pairs.txt") if q.fold == 10][300:303]
    faces = _aligned_lfw(lfw_files, pairs)
    for rel, arr in faces.items():  # an aligned LFW-layout folder, as users have it
        (tmp_path / "aligned" / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(tmp_path / "aligned" / rel, quality=95)
    (tmp_path / "pairs.txt").write_text("1\t3\n" + "\n".join(
        f"{q.name_a}\t{q.idx_a}\t{q.idx_b}" if q.issame else f"{q.name_a}\t{q.idx_a}\t{q.name_b}\t{q.idx_b}" for q in pairs) + "\n")
    out = tmp_path / "bench" / "lfw.bin"
    out.parent.mkdir()
    r = subprocess.run([sys.executable, "-m", "flows", "build-bin", "--pairs", str(tmp_path / "pairs.txt"),
                        "--images", str(tmp_path / "aligned"), "--out", str(out)], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    bins, issame = read_bin(out)
    assert issame.tolist() == [True] * 3 + [False] * 3 and len(bins) == 12
    rels = [k for q in pairs for k in (f"{q.name_a}/{q.name_a}_{q.idx_a:04d}.jpg", f"{q.name_b}/{q.name_b}_{q.idx_b:04d}.jpg")]
    assert bins == [(tmp_path / "aligned" / k).read_bytes() for k in rels]  # exact bytes, pairs adjacent
    decoded = np.concatenate(list(decoded_batches(bins, batch_size=5)))
    assert decoded.shape == (12, 112, 112, 3)
    assert find_bins(tmp_path / "bench") == {"lfw": out}
    # a missing image is an error, never a silently dropped pair
    (tmp_path / "aligned" / rels[0]).unlink()
    r = subprocess.run([sys.executable, "-m", "flows", "build-bin", "--pairs", str(tmp_path / "pairs.txt"),
                        "--images", str(tmp_path / "aligned"), "--out", str(tmp_path / "x.bin")], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and "missing" in r.stderr and not (tmp_path / "x.bin").exists()
    with pytest.raises(KeyError):
        build_bin([("a", "b", True)], {"a": b"1"})


def test_write_bin_checked_and_reserved_name(tmp_path):
    with pytest.raises(ValueError):
        write_bin(tmp_path / "x.bin", [b"a"], [True])
    assert not list(tmp_path.iterdir())
    write_bin(tmp_path / "x.bin", [b"a", b"b"], [np.bool_(True)])
    assert read_bin(tmp_path / "x.bin")[1].tolist() == [True]
    assert list(find_bins(tmp_path)) == ["x"]
    write_bin(tmp_path / "lfw_heldout.bin", [b"a", b"b"], [True])  # would silently replace the calibration set
    with pytest.raises(ValueError, match="reserved"):
        find_bins(tmp_path)
    # malformed opcode streams end as a clear ValueError, whatever the unpickler trips on
    (tmp_path / "bad.bin").write_bytes(b"\x80\x04]}b.")  # BUILD on a list
    with pytest.raises(ValueError, match="not a readable"):
        read_bin(tmp_path / "bad.bin")


def test_bad_benchmark_files_are_one_line_errors_not_hangs(tmp_path):
    """A FIFO named like a .bin is refused before anything opens it (opening one blocks forever); an image that
    does not decode, or is absurdly large, is named by file and slot."""
    import io
    os.mkfifo(tmp_path / "cfp_fp.bin")
    with pytest.raises(ValueError, match=r"cfp_fp.bin: not a regular file"):
        find_bins(tmp_path)
    from tasks.benchmarks import verify_images
    good = io.BytesIO()
    Image.fromarray(np.zeros((112, 112, 3), np.uint8)).save(good, format="JPEG")
    bins = [good.getvalue()] * 3 + [good.getvalue()[:200]]  # the 4th is truncated
    with pytest.raises(ValueError, match=r"x.bin: image 3 \(pair 1\) does not decode \(OSError"):
        verify_images(tmp_path / "x.bin", bins)
    huge = io.BytesIO()
    Image.new("L", (5000, 10)).save(huge, format="PNG")
    with pytest.raises(ValueError, match=r"image 1 \(pair 0\) does not decode \(ValueError: 5000x10 px, above 4096"):
        verify_images("x.bin", [good.getvalue(), huge.getvalue()])
    verify_images("x.bin", [good.getvalue()] * 2)  # good images pass


def test_build_bin_takes_any_imagefolder_and_a_pairs_file_of_paths(tmp_path, capsys):
    """build-bin beyond LFW's layout: names with spaces and any extension, pairs given as paths; malformed pairs
    files are one line naming the file and line (exit 2), and nothing is written."""
    import io as _io

    from flows.__main__ import main
    rng = np.random.default_rng(0)
    rels = ["Ana María/photo 1.jpg", "Ana María/photo 2.jpg", "Bob/x.png"]
    for rel in rels:
        (tmp_path / "faces" / rel).parent.mkdir(parents=True, exist_ok=True)
        buf = _io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (112, 112, 3), dtype=np.uint8)).save(buf, format="PNG" if rel.endswith("png") else "JPEG")
        (tmp_path / "faces" / rel).write_bytes(buf.getvalue())
    (tmp_path / "pairs.tsv").write_text(f"{rels[0]}\t{rels[1]}\t1\n{rels[0]}\t{rels[2]}\t0\n")
    out = tmp_path / "mine.bin"
    assert main(["build-bin", "--pairs", str(tmp_path / "pairs.tsv"), "--images", str(tmp_path / "faces"), "--out", str(out)]) == 0
    bins, issame = read_bin(out)
    assert issame.tolist() == [True, False] and bins == [(tmp_path / "faces" / r).read_bytes() for r in (rels[0], rels[1], rels[0], rels[2])]
    capsys.readouterr()
    for name, text, extra, message in (
            ("lfw.txt", "10\t300\nAbel_Pacheco\t1\n", [], "lfw.txt: the header promises 10 x 600 pairs, the file holds 1"),
            ("short.txt", "1\t1\nAbel_Pacheco\t1\t2\nAbel_Pacheco\tone\tBob\t2\n", [], "short.txt:3: expected '<name> <n> <n>'"),
            ("up.tsv", "../x.jpg\tBob/x.png\t0\n", [], "up.tsv:1: '../x.jpg' is not a path inside the image folder"),
            ("label.tsv", f"{rels[0]}\t{rels[1]}\tyes\n", [], "label.tsv:1: expected"),
            ("folds.tsv", f"{rels[0]}\t{rels[1]}\t1\n", ["--folds", "1"], "--folds applies to LFW's pairs.txt")):
        (tmp_path / name).write_text(text)
        rc = main(["build-bin", "--pairs", str(tmp_path / name), "--images", str(tmp_path / "faces"), "--out", str(tmp_path / "x.bin"), *extra])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and message in err and err.count("\n") == 0, (name, err)
        assert not (tmp_path / "x.bin").exists()
