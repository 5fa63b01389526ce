"""A scraped folder of bad inputs through align's import path (align.train_source imagefolder:, as a
folder and as a zip): every file ends accepted or rejected with a reason, accepted + rejected = inputs,
nothing crashes; hostile archives are refused before anything is read."""
import io
from pathlib import Path
import shutil
import tarfile
import zipfile

import numpy as np
import pytest
from PIL import Image

from tasks.archives import ArchiveImages, UnsafeArchive

P = {"detector": "mtcnn", "weights_dir": "weights", "pose": "pnp", "age_estimator": None, "min_score": 0.9,
     "output_size": 112, "jpeg_quality": 95, "batch_size": 8, "pre_aligned": False,
     "min_images_per_person": 1, "max_images_per_person": 100, "max_train_people": 100}


def _save(im, fmt, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def corpus(lfw_files, tmp_path_factory):
    """scraped/<person>/<file> -> what must become of it ('ok', or a phrase the reason contains)."""
    with zipfile.ZipFile(lfw_files / "lfw-deepfunneled.zip") as z:
        jpgs = sorted(n for n in z.namelist() if n.endswith(".jpg"))[:8]
        real = [z.read(n) for n in jpgs]
    rgb = [Image.open(io.BytesIO(r)).convert("RGB") for r in real]
    exif = Image.Exif()
    exif[0x0112] = 8  # stored turned; viewers rotate it 90 degrees back
    wide = np.zeros((1, 1), np.uint8)
    files = {
        "Ana María/foto 1.jpg": (real[0], "same photo"),
        "Ana María/foto_1.jpg": (real[1], "ok"),  # sanitises to the same key as the one above
        "Ana María/copy of foto 1.jpg": (real[0], "same photo"),  # one stays, the other is its duplicate
        "Ana María/alpha.png": (_save(rgb[2].convert("RGBA"), "PNG"), "ok"),
        "Ana María/deep.png": (_save(Image.fromarray((np.asarray(rgb[3].convert("L"), np.uint16) * 257)), "PNG"), "ok"),
        "Ana María/cmyk.jpg": (_save(rgb[4].convert("CMYK"), "JPEG", quality=95), "ok"),
        "Ana María/gray.jpg": (_save(rgb[5].convert("L"), "JPEG", quality=95), "ok"),
        "Ana María/turned.jpg": (_save(rgb[6].transpose(Image.Transpose.ROTATE_270), "JPEG", quality=95, exif=exif.tobytes()), "ok"),
        "李 雷/truncated.jpg": (real[7][:len(real[7]) // 3], "unreadable image"),
        "李 雷/empty.jpg": (b"", "empty file"),
        "李 雷/noise.jpg": (np.random.default_rng(0).bytes(4000), "not a decodable image"),
        "李 雷/one pixel.png": (_save(Image.fromarray(wide), "PNG"), "too small"),
        "李 雷/bomb.png": (_save(Image.new("1", (10000, 10000)), "PNG"), "decompression bomb"),
        "李 雷/wall.png": (_save(Image.new("RGB", (250, 250), (128, 128, 128)), "PNG"), "no face"),
        # not read by an import, each still rejected with its reason
        "李 雷/anim.gif": (_save(rgb[0], "GIF"), "not an image type imports read (.gif"),
        "李 雷/scan.tiff": (_save(rgb[0], "TIFF"), "not an image type imports read (.tiff"),
        "李 雷/phone.HEIC": (b"ftypheic" + bytes(64), "not an image type imports read (.heic"),
        "李 雷/.DS_Store": (b"\0\0\0\1Bud1", "hidden name"),
        "readme.txt": (b"scraped 2026", "outside a class folder"),
    }
    root = tmp_path_factory.mktemp("bad") / "scraped"
    for rel, (data, _) in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root, {rel: want for rel, (_, want) in files.items()}, rgb[6]


def _align(kind_path, base):
    """align's own code for an imported source: members, the chunk task's body, duplicate removal."""
    from flows.align import align_chunk
    from tasks.align import reject_duplicates
    from tasks.interchange import source_members
    source, members, skipped = source_members(f"imagefolder:{kind_path}", base, P)
    src = source if source.is_file() else str(source)
    accepted, rejected = align_chunk.fn("imagefolder", src, members, P, {})
    return members, reject_duplicates(accepted, rejected), skipped + rejected, len(members) + len(skipped)


@pytest.mark.parametrize("packed", ["folder", "zip"])
def test_every_bad_input_ends_accepted_or_rejected_with_a_reason(corpus, packed):
    root, want, upright = corpus
    if packed == "zip":
        shutil.make_archive(str(root.parent / "scraped"), "zip", root.parent, "scraped")
        target = "scraped.zip"
    else:
        target = "scraped"
    members, accepted, rejected, inputs = _align(target, root.parent)
    assert inputs == len(want) and len({m[0] for m in members}) == len(members)  # every file, its own key
    assert len(accepted) + len(rejected) == inputs  # nothing lost
    name = lambda m: str(m[1].relative_to(root) if hasattr(m[1], "relative_to") else m[1].split("/", 1)[1])  # noqa: E731
    rel_of = {m[0]: name(m) for m in members}
    got = {rel_of[a["key"]]: "ok" for a in accepted}
    got.update({rel_of[r["key"]] if r["key"] in rel_of else r["source"].split("/", 1)[1]: r["reason"] for r in rejected})
    for rel, expect in want.items():
        if expect != "same photo":
            assert expect in got[rel], f"{rel}: expected {expect!r}, got {got[rel]!r}"
    dup = [r for r in rejected if r["reason"] == "duplicate"]
    same = {rel for rel, w in want.items() if w == "same photo"}
    assert len(dup) == 1 and {rel_of[dup[0]["key"]], rel_of[dup[0]["duplicate_of"]]} == same
    assert got[rel_of[dup[0]["duplicate_of"]]] == "ok"
    ok = {rel_of[a["key"]]: a for a in accepted}
    assert ok["Ana María/deep.png"]["source_mode"].startswith("I") and ok["Ana María/cmyk.jpg"]["source_mode"] == "CMYK"
    # the EXIF-turned photo is aligned upright: its crop matches the crop of the photo it was turned from
    from tasks.align import align_items, make_detector
    ref, _ = align_items([("ref", "ref", _save(upright, "JPEG", quality=95), {})], make_detector("mtcnn"), P)
    diff = np.abs(np.asarray(Image.open(io.BytesIO(ok["Ana María/turned.jpg"]["jpg"])), float)
                  - np.asarray(Image.open(io.BytesIO(ref[0]["jpg"])), float)).mean()
    assert diff < 12, diff


def _tar_with(path, info, data=b""):
    with tarfile.open(path, "w:gz" if str(path).endswith(".gz") else "w") as t:
        t.addfile(info, io.BytesIO(data) if data else None)


@pytest.mark.parametrize("case", ["dotdot", "absolute", "symlink", "hardlink", "fifo", "zip_dotdot", "zip_absolute", "zip_symlink"])
def test_hostile_archives_are_refused(tmp_path, case):
    path = tmp_path / ("a.zip" if case.startswith("zip") else "a.tar")
    if case in ("dotdot", "absolute"):
        info = tarfile.TarInfo("../../etc/evil.jpg" if case == "dotdot" else "/etc/evil.jpg")
        info.size = 3
        _tar_with(path, info, b"abc")
    elif case in ("symlink", "hardlink", "fifo"):
        info = tarfile.TarInfo("people/x.jpg")
        info.type = {"symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE, "fifo": tarfile.FIFOTYPE}[case]
        info.linkname = "/etc/passwd"
        _tar_with(path, info)
    else:
        with zipfile.ZipFile(path, "w") as z:
            if case == "zip_symlink":
                zi = zipfile.ZipInfo("people/x.jpg")
                zi.external_attr = (0o120777 << 16)
                z.writestr(zi, "/etc/passwd")
            else:
                z.writestr("../evil.jpg" if case == "zip_dotdot" else "/evil.jpg", b"abc")
    with pytest.raises(UnsafeArchive, match="refused"):
        ArchiveImages(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # nothing was extracted anywhere


def test_safe_tar_reads_by_name_and_refuses_oversized_members(tmp_path, monkeypatch):
    import tasks.archives as archives
    info = tarfile.TarInfo("people/a.jpg")
    info.size = 10
    _tar_with(tmp_path / "ok.tar.gz", info, b"0123456789")
    with ArchiveImages(tmp_path / "ok.tar.gz") as a:
        assert a.names == ["people/a.jpg"] and a.read("people/a.jpg") == b"0123456789"
        monkeypatch.setattr(archives, "MAX_MEMBER_BYTES", 5)
        with pytest.raises(OSError, match="inflates to 10 bytes"):
            a.read("people/a.jpg")
        with pytest.raises(FileNotFoundError):
            a.read("people/b.jpg")


def test_awkward_but_honest_archives_are_read(tmp_path, lfw_files):
    """A tar made with `tar -C dir -cf x.tar .` ('./' members), macOS resource forks, a scraped name far
    longer than a tar name allows, and a zip member with a bad CRC (rejected alone, the rest still read)."""
    from tasks.archives import UnreadableMember
    from tasks.interchange import source_members
    tree = tmp_path / "tree"
    long_name = "Émile " * 30 + ".jpg"
    for rel in ("a/1.jpg", "a/2.jpg", f"b/{long_name}", "b/3.jpg"):
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_bytes(b"jpeg bytes of " + rel.encode())
    with tarfile.open(tmp_path / "dot.tar", "w") as t:
        t.add(tree, arcname=".")
        info = tarfile.TarInfo("./__MACOSX/a/._1.jpg")
        info.size = 4
        t.addfile(info, io.BytesIO(b"rsrc"))
    p = {**P, "min_images_per_person": 1}
    source, members, skipped = source_members("imagefolder:dot.tar", tmp_path, p)
    assert [r["reason"] for r in skipped] == ["hidden name (starts with '.' or is __MACOSX)"]
    assert source == tmp_path / "dot.tar"
    assert sorted(m[2]["identity"] for m in members) == ["a", "a", "b", "b"]  # the resource fork is no photo of 'a'
    assert all(len(f"{m[0]}.json".encode()) <= 100 for m in members)  # fits a USTAR tar name
    with ArchiveImages(tmp_path / "dot.tar") as a:
        assert all(a.read(m[1]).startswith(b"jpeg bytes of ") for m in members)
    raw = io.BytesIO()
    with zipfile.ZipFile(raw, "w", zipfile.ZIP_STORED) as z:
        z.writestr("a/good.jpg", b"good bytes")
        z.writestr("a/bad.jpg", b"bad bytes!")
    data = raw.getvalue().replace(b"bad bytes!", b"BAD bytes!")  # the stored CRC no longer matches
    (tmp_path / "crc.zip").write_bytes(data)
    with ArchiveImages(tmp_path / "crc.zip") as a:
        assert a.read("a/good.jpg") == b"good bytes"
        with pytest.raises(UnreadableMember, match="bad.jpg"):
            a.read("a/bad.jpg")


def test_every_entry_of_an_imagefolder_is_read_or_rejected_with_its_reason(tmp_path):
    """What an ImageFolder import does not read still appears in the rejects with a reason (accepted +
    rejected = inputs): a FIFO (never opened: it would block), an empty class folder, a folder inside a class
    folder, a file outside any class folder, and the images align's per-person limits leave out."""
    import os

    from tasks.interchange import source_members
    tree = tmp_path / "tree"
    for rel in ("a/1.jpg", "a/2.jpg", "a/3.jpg", "b/1.png", "c/1.jpg", "c/2.jpg", "d/1.jpg", "d/2.jpg", "a/sub/x.jpg", "top.jpg"):
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_bytes(b"jpeg bytes of " + rel.encode())
    (tree / "empty").mkdir()
    os.mkfifo(tree / "a" / "pipe.jpg")
    p = {"min_images_per_person": 2, "max_images_per_person": 2, "max_train_people": 2}
    source, members, skipped = source_members("imagefolder:tree", tmp_path, p)
    kept = sorted(m[1].relative_to(tree).as_posix() for m in members)
    why = {r["source"]: r["reason"] for r in skipped}
    assert kept == ["a/1.jpg", "a/2.jpg", "c/1.jpg", "c/2.jpg"]
    assert len(members) + len(skipped) == 12 and len(why) == 8  # every entry once
    assert why["tree/a/3.jpg"] == "beyond align.max_images_per_person (2)"
    assert why["tree/b/1.png"] == "its person has 1 images, below align.min_images_per_person (2)"
    assert why["tree/d/1.jpg"] == why["tree/d/2.jpg"] == "its person is beyond align.max_train_people (2)"
    assert why["tree/a/sub"].startswith("a folder inside a class folder")
    assert why["tree/a/pipe.jpg"] == "not a regular file"
    assert why["tree/empty"] == "empty class folder"
    assert why["tree/top.jpg"].startswith("outside a class folder")


def test_an_import_with_no_class_folders_is_one_line_before_any_output(tmp_path, prefect_api):
    """A zip of loose photos (no <class>/ folders): align says so at once, exit 2, and writes no output (it
    used to overwrite manifest.parquet and then fail on a missing head-pose pool)."""
    import subprocess
    import sys

    import yaml

    from flows import ROOT
    from tests.conftest import lfw_dir
    from tests.test_pipeline_e2e import project_env
    proj = tmp_path / "proj"
    for k in ("flows", "tasks", "models"):
        shutil.copytree(ROOT / k, proj / k, ignore=shutil.ignore_patterns("__pycache__"))
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p["data"]["dir"] = "data/lfw"
    p["align"]["train_source"] = "imagefolder:data/loose.zip"
    (proj / "params.yaml").write_text(yaml.safe_dump(p))
    (proj / "data").mkdir()
    (proj / "data" / "lfw").symlink_to(lfw_dir(), target_is_directory=True)
    with zipfile.ZipFile(proj / "data" / "loose.zip", "w") as z:
        z.writestr("one.jpg", b"a photo")
        z.writestr("two.jpg", b"another")
    r = subprocess.run([sys.executable, "-m", "flows", "align"], cwd=proj, env=project_env(prefect_api),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "align.train_source imagefolder:data/loose.zip: no image to train on" in r.stderr
    assert "outside a class folder" in r.stderr and "Traceback" not in r.stderr
    assert not (proj / "artifacts" / "align" / "manifest.parquet").exists()


@pytest.mark.parametrize("ext", ["tar", "tar.gz", "zip"])
def test_a_truncated_archive_is_one_error_naming_it(tmp_path, ext):
    from tasks.archives import DamagedArchive
    from tasks.interchange import source_members
    tree = tmp_path / "tree"
    for i in range(12):
        (tree / "a").mkdir(parents=True, exist_ok=True)
        (tree / "a" / f"{i}.jpg").write_bytes(np.random.default_rng(i).bytes(4000))
    made = Path(shutil.make_archive(str(tmp_path / "scraped"), {"tar": "tar", "tar.gz": "gztar", "zip": "zip"}[ext], tree))
    raw = made.read_bytes()
    made.write_bytes(raw[:len(raw) // 2])
    with pytest.raises((DamagedArchive, UnsafeArchive), match=f"scraped.{ext}"):
        source_members(f"imagefolder:scraped.{ext}", tmp_path, P)
