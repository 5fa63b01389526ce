"""RecordIO (insightface layout, no mxnet) and ImageFolder export/import on real LFW images: round trips
give the same bytes and labels; the dmlc framing splits at magic words; bad files fail clearly."""
import struct
import zipfile

import numpy as np
import pytest

from tasks.interchange import (MAGIC, RecordIOError, export_imagefolder, export_recordio, frame, pack_record,
                               read_frame, read_imagefolder, read_index, read_recordio, recordio_record, unpack_record)


@pytest.fixture(scope="module")
def faces(lfw_files):
    """(label, key, jpeg bytes) for 3 real people, 2-3 images each, grouped by label."""
    with zipfile.ZipFile(lfw_files / "lfw-deepfunneled.zip") as z:
        names = sorted(n for n in z.namelist() if n.endswith(".jpg"))
        people = {}
        for n in names:
            people.setdefault(n.split("/")[-2], []).append(n)
        chosen = [p for p in sorted(people) if len(people[p]) >= 3][:3]
        return [(label, people[p][i].split("/")[-1][:-4], z.read(people[p][i]))
                for label, p in enumerate(chosen) for i in range(2 + label % 2)]


def test_recordio_round_trip_and_insightface_layout(tmp_path, faces):
    info = export_recordio([(label, data) for label, _, data in faces], tmp_path / "train")
    assert info == {"images": len(faces), "identities": 3}
    assert list(read_recordio(tmp_path / "train")) == [(label, data) for label, _, data in faces]
    # what arcface_torch's MXFaceDataset reads: record 0's label = [first identity record, end]
    with open(tmp_path / "train.rec", "rb") as f:
        flag, head, _, _ = unpack_record(read_frame(f, read_index(tmp_path / "train")[0]))
        assert flag == 2 and head.tolist() == [len(faces) + 1, len(faces) + 4]
        ranges = [unpack_record(read_frame(f, read_index(tmp_path / "train")[i]))[1].tolist() for i in range(int(head[0]), int(head[1]))]
    assert ranges == [[1, 3], [3, 6], [6, 8]]  # [first image, end) per identity
    assert recordio_record(tmp_path / "train", 4) == (faces[3][0], faces[3][2])
    assert not list(tmp_path.glob(".*"))  # written atomically, nothing temporary left


def test_frame_splits_at_magic_and_rejoins(tmp_path):
    magic = struct.pack("<I", MAGIC)
    payload = b"abcd" + magic + b"efgh" + magic + b"xyz"  # magic words at aligned offsets 4 and 12
    framed = frame(payload)
    heads = [struct.unpack("<II", framed[o:o + 8]) for o in (0, 12, 24)]
    assert [(h[1] >> 29, h[1] & 0x1FFFFFFF) for h in heads] == [(1, 4), (2, 4), (3, 3)]
    assert len(framed) % 4 == 0
    (tmp_path / "r.bin").write_bytes(framed + frame(b"next"))
    with open(tmp_path / "r.bin", "rb") as f:
        assert read_frame(f, 0) == payload and read_frame(f, len(framed)) == b"next"


def test_scalar_and_array_labels():
    assert unpack_record(pack_record(7, b"img"))[1::2] == (7.0, b"img")
    flag, label, _, rest = unpack_record(pack_record([1.0, 5.0], b"img"))
    assert flag == 2 and label.tolist() == [1.0, 5.0] and rest == b"img"


def test_bad_recordio_files_fail_clearly(tmp_path, faces):
    export_recordio([(label, data) for label, _, data in faces], tmp_path / "ok")
    (tmp_path / "bad.rec").write_bytes(b"\0" * 64)
    (tmp_path / "bad.idx").write_text("0\t0\n")
    with pytest.raises(RecordIOError, match="bad magic"):
        list(read_recordio(tmp_path / "bad"))
    raw = (tmp_path / "ok.rec").read_bytes()
    (tmp_path / "cut.rec").write_bytes(raw[:len(raw) // 2])
    (tmp_path / "cut.idx").write_text((tmp_path / "ok.idx").read_text())
    with pytest.raises(RecordIOError, match="truncated|bad magic"):
        list(read_recordio(tmp_path / "cut"))
    with pytest.raises(RecordIOError, match="grouped by label"):
        export_recordio([(1, b"a"), (0, b"b")], tmp_path / "unsorted")
    idx = (tmp_path / "ok.idx").read_text()
    for name, text, message in (("neg", "0\t-5\n", "two non-negative integers"), ("letters", "a\tb\n", "two non-negative"),
                                ("binary", "\udcff0\t0\n", "not a text index")):
        (tmp_path / f"{name}.rec").write_bytes(raw)
        (tmp_path / f"{name}.idx").write_bytes(text.encode("utf-8", "surrogateescape"))
        with pytest.raises(RecordIOError, match=message):
            list(read_recordio(tmp_path / name))
    import struct
    offsets = {int(a): int(b) for a, b in (line.split("\t") for line in idx.splitlines())}
    for name, at, value, message in (("huge", 32, 1e9, "images end at 1000000000, outside the index"),  # header's [end, ...]
                                     ("nan", offsets[1] + 12, float("nan"), "record 1 has label nan")):
        bad = bytearray(raw)
        struct.pack_into("<f", bad, at, value)
        (tmp_path / f"{name}.rec").write_bytes(bytes(bad))
        (tmp_path / f"{name}.idx").write_text(idx)
        with pytest.raises(RecordIOError, match=message):  # not a 1e9-entry list, not a raw ValueError
            list(read_recordio(tmp_path / name))


def test_imagefolder_round_trip(tmp_path, faces):
    assert export_imagefolder(faces, tmp_path / "tree") == {"images": len(faces), "identities": 3}
    got = list(read_imagefolder(tmp_path / "tree"))
    assert [(label, path.read_bytes()) for label, _, path in got] == [(label, data) for label, _, data in faces]
    assert got[0][2] == tmp_path / "tree" / "000000" / f"{faces[0][1]}.jpg"
    assert np.unique([c for _, c, _ in got]).tolist() == ["000000", "000001", "000002"]


def test_imagefolder_refuses_symlinks_out_of_its_root(tmp_path, faces):
    """A linked image or class folder that leads outside the tree is an error naming it; links inside are read."""
    export_imagefolder(faces, tmp_path / "tree")
    outside = tmp_path / "secret.jpg"
    outside.write_bytes(faces[0][2])
    inner = tmp_path / "tree" / "000000" / "inner.jpg"
    inner.symlink_to(list(read_imagefolder(tmp_path / "tree"))[-1][2])  # stays inside: fine
    assert inner in [path for _, _, path in read_imagefolder(tmp_path / "tree")]
    link = tmp_path / "tree" / "000001" / "leak.jpg"
    link.symlink_to(outside)
    with pytest.raises(ValueError, match=f"{link}: a symlink out of the ImageFolder root"):
        list(read_imagefolder(tmp_path / "tree"))
    link.unlink()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "tree" / "000009").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.raises(ValueError, match="000009: a symlink out of the ImageFolder root"):
        list(read_imagefolder(tmp_path / "tree"))


def test_recordio_pair_with_a_dotted_prefix_replaces_an_older_pair(tmp_path, faces):
    """'faces.v2' names faces.v2.rec/.idx (the suffix is appended, not swapped), and exporting over an
    older pair leaves the new .rec with the new .idx."""
    from tasks.interchange import RecordIOReader, rec_idx
    assert rec_idx(tmp_path / "faces.v2") == (tmp_path / "faces.v2.rec", tmp_path / "faces.v2.idx")
    assert rec_idx(tmp_path / "faces.v2.rec") == rec_idx(tmp_path / "faces.v2")
    export_recordio([(0, b"old")], tmp_path / "faces.v2")
    export_recordio([(label, data) for label, _, data in faces], tmp_path / "faces.v2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["faces.v2.idx", "faces.v2.rec"]
    with RecordIOReader(tmp_path / "faces.v2.rec") as r:
        assert [(label, data) for _, label, data in r.records()] == [(label, data) for label, _, data in faces]
        assert r.image_indices() == list(range(1, len(faces) + 1))


def test_imagefolder_import_takes_prealigned_faces_as_they_are(tmp_path, faces):
    """align.train_source imagefolder:...: members per class; pre-aligned 112x112 crops pass unchanged."""
    from PIL import Image
    import io

    from tasks.align import make_detector, prealigned_items
    from tasks.interchange import source_members
    crops = []
    for label, key, data in faces:  # LFW photos centre-cropped to 112x112 stand in for aligned crops
        im = Image.open(io.BytesIO(data)).convert("RGB").crop((69, 69, 181, 181))
        buf = io.BytesIO(); im.save(buf, format="JPEG", quality=95)
        crops.append((label, key, buf.getvalue()))
    export_imagefolder(crops, tmp_path / "tree")
    (tmp_path / "tree" / "000001" / "broken.jpg").write_bytes(b"not an image")
    p = {"min_images_per_person": 3, "max_images_per_person": 10, "max_train_people": 10, "output_size": 112,
         "jpeg_quality": 95, "batch_size": 8}
    source, members, skipped = source_members("imagefolder:tree", tmp_path, p)
    assert len(skipped) == len(faces) + 1 - len(members)  # the other classes: too few images, each rejected with why
    assert source == tmp_path / "tree"
    assert sorted({m[2]["identity"] for m in members}) == ["000001"]  # the others have only 2 images each
    items = [(k, str(path), path.read_bytes(), meta) for k, path, meta in members]
    accepted, rejected = prealigned_items(items, make_detector("mtcnn"), p)
    assert [r["reason"] for r in rejected] == ["not a decodable image"]
    assert sorted(a["jpg"] for a in accepted) == sorted(d for label, _, d in crops if label == 1)
    assert all(a["pose_source"] in ("pnp", "none") for a in accepted) and any(a["pose_source"] == "pnp" for a in accepted)


def test_prealigned_odd_inputs_are_squared_and_reencoded(lfw_files):
    """A 112x96 crop is padded to square (never stretched); an EXIF-rotated or grayscale 112x112 JPEG is
    re-encoded upright in RGB instead of keeping bytes that readers decode differently."""
    import io

    from PIL import Image

    from tasks.align import decode, exif_rotated, prealigned_items
    with zipfile.ZipFile(lfw_files / "lfw-deepfunneled.zip") as z:
        photo = Image.open(io.BytesIO(z.read(sorted(n for n in z.namelist() if n.endswith(".jpg"))[0]))).convert("RGB")

    def jpeg(im, **kw):
        buf = io.BytesIO(); im.save(buf, format="JPEG", quality=95, **kw); return buf.getvalue()
    narrow = jpeg(photo.crop((77, 69, 173, 181)))  # 96 wide, 112 high
    exif = Image.Exif(); exif[0x0112] = 6  # "rotate 90 clockwise to view"
    rotated = jpeg(photo.crop((69, 69, 181, 181)), exif=exif.tobytes())
    plain = jpeg(photo.crop((69, 69, 181, 181)))
    gray = jpeg(photo.crop((69, 69, 181, 181)).convert("L"))
    assert exif_rotated(rotated) and not exif_rotated(plain)
    p = {"output_size": 112, "jpeg_quality": 95, "batch_size": 8}
    items = [(k, k, raw, {}) for k, raw in [("narrow", narrow), ("rotated", rotated), ("plain", plain), ("gray", gray)]]
    accepted, rejected = prealigned_items(items, None, p)
    assert rejected == [] and [a["key"] for a in accepted] == ["narrow", "rotated", "plain", "gray"]
    out = {a["key"]: a for a in accepted}
    assert out["plain"]["jpg"] == plain  # an upright RGB 112x112 JPEG keeps its bytes
    for k in ("narrow", "rotated", "gray"):
        assert out[k]["jpg"] != {i[0]: i[2] for i in items}[k]
        im = Image.open(io.BytesIO(out[k]["jpg"]))
        assert im.size == (112, 112) and im.mode == "RGB" and not exif_rotated(out[k]["jpg"])
    sq = np.asarray(Image.open(io.BytesIO(out["narrow"]["jpg"])), dtype=float)
    assert sq[:, :6].mean() < 8 and sq[:, -6:].mean() < 8 and sq[:, 20:92].mean() > 40  # black bars, face kept
    upright = decode(rotated)[0]  # what the EXIF asked for: now in the pixels
    assert np.abs(np.asarray(Image.open(io.BytesIO(out["rotated"]["jpg"])), dtype=float) - upright).mean() < 6
