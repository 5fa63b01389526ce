"""Interchange with other face-recognition tooling, without mxnet or torchvision at run time.

- insightface RecordIO (`.rec` + `.idx`, the layout of faces_webface_112x112 / MS1M and what
  arcface_torch's MXFaceDataset reads): dmlc RecordIO framing (magic 0xced7230a, length with a 3-bit
  continuation flag, 4-byte padding, records split where the payload holds the magic word) around
  mxnet's IRHeader (struct 'IfQQ': flag, label, id, id2; flag > 0 means a float32 label array follows).
  Record 0 is the header (label = [first identity record, end]), records 1..N the images (label = class),
  then one record per identity (label = [first image, end)).
- ImageFolder trees: root/<class>/<image>, classes in sorted order (torchvision's ImageFolder labels).

    export_recordio(samples, "out/train")        # samples: (label, image bytes) in label order -> train.rec/.idx
    for label, data in read_recordio("out/train"): ...
    export_imagefolder(samples_with_keys, "out/images");  for label, cls, path in read_imagefolder("out/images"): ...
    python -m flows export --format recordio|imagefolder --out DIR   # a packaged dataset
"""
from __future__ import annotations

import hashlib
import struct
from collections import Counter
from pathlib import Path, PurePosixPath
from typing import Iterable, Iterator

import numpy as np

from .archives import ArchiveImages, is_archive
from .io import InputError, atomic_path

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
IR_FORMAT = "<IfQQ"  # mxnet packs native 'IfQQ': 24 bytes, little-endian on every platform it ships for
IR_SIZE = struct.calcsize(IR_FORMAT)
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class RecordIOError(InputError):
    pass


def rec_idx(prefix) -> tuple[Path, Path]:
    """prefix ('data/train', 'data/faces.v2' or 'data/train.rec') -> (its .rec, its .idx). The suffix is
    appended, never swapped: a dotted prefix keeps its dots."""
    prefix = Path(prefix)
    if prefix.suffix in (".rec", ".idx"):
        prefix = prefix.with_suffix("")
    return prefix.with_name(prefix.name + ".rec"), prefix.with_name(prefix.name + ".idx")


def pack_record(label, data: bytes, idx: int = 0) -> bytes:
    """mxnet.recordio.pack: a scalar label (flag 0) or a float32 label array (flag = its size)."""
    if np.ndim(label) == 0:
        return struct.pack(IR_FORMAT, 0, float(label), idx, 0) + data
    arr = np.asarray(label, dtype="<f4")
    return struct.pack(IR_FORMAT, arr.size, 0.0, idx, 0) + arr.tobytes() + data


def unpack_record(payload: bytes) -> tuple[int, float | np.ndarray, int, bytes]:
    """-> (flag, label (scalar or float32 array), id, remaining bytes)."""
    if len(payload) < IR_SIZE:
        raise RecordIOError(f"record of {len(payload)} bytes is shorter than its {IR_SIZE}-byte header")
    flag, label, idx, _ = struct.unpack(IR_FORMAT, payload[:IR_SIZE])
    rest = payload[IR_SIZE:]
    if flag > 0:
        if len(rest) < 4 * flag:
            raise RecordIOError(f"record header announces {flag} labels but holds {len(rest)} bytes")
        return flag, np.frombuffer(rest[:4 * flag], dtype="<f4").copy(), idx, rest[4 * flag:]
    return flag, label, idx, rest


def frame(payload: bytes) -> bytes:
    """dmlc RecordIOWriter::WriteRecord: split where an aligned magic word occurs, pad to 4 bytes."""
    if len(payload) >= 1 << 29:
        raise RecordIOError("a RecordIO record must be smaller than 512 MiB")
    out, start = bytearray(), 0
    for i in range(0, len(payload) // 4 * 4, 4):
        if payload[i:i + 4] == _MAGIC_BYTES:
            out += _MAGIC_BYTES + struct.pack("<I", ((1 if start == 0 else 2) << 29) | (i - start)) + payload[start:i]
            start = i + 4
    out += _MAGIC_BYTES + struct.pack("<I", ((3 if start else 0) << 29) | (len(payload) - start)) + payload[start:]
    out += b"\0" * (-len(payload) % 4)
    return bytes(out)


def read_frame(f, offset: int) -> bytes:
    """One logical record starting at `offset`, rejoining split parts (dmlc RecordIOReader)."""
    f.seek(offset)
    parts = []
    while True:
        head = f.read(8)
        if len(head) < 8:
            raise RecordIOError(f"truncated record header at byte {f.tell() - len(head)}")
        magic, lrec = struct.unpack("<II", head)
        if magic != MAGIC:
            raise RecordIOError(f"bad magic {magic:#x} at byte {f.tell() - 8}: not a RecordIO file, or a wrong .idx")
        cflag, length = lrec >> 29, lrec & ((1 << 29) - 1)
        data = f.read(length)
        if len(data) < length:
            raise RecordIOError(f"truncated record at byte {f.tell() - len(data)}")
        f.read(-length % 4)
        parts.append(data)
        if cflag in (0, 3):
            return _MAGIC_BYTES.join(parts)
        if cflag not in (1, 2):
            raise RecordIOError(f"bad continuation flag {cflag}")


def export_recordio(samples: Iterable[tuple[int, bytes]], prefix) -> dict:
    """Write prefix.rec/.idx in insightface's layout; samples must come grouped by label, labels 0..K-1.
    Both files are written in full before either is renamed into place, the old .idx removed first:
    a reader finds the old pair, the new pair, or no .idx - never a .rec with another file's index."""
    rec_path, idx_path = rec_idx(prefix)
    rec_path.parent.mkdir(parents=True, exist_ok=True)
    offsets, labels = [], []
    with atomic_path(idx_path) as tmp_idx:
        with atomic_path(rec_path) as tmp_rec:
            with open(tmp_rec, "wb") as f:
                f.write(frame(pack_record([0.0, 0.0], b"", 0)))  # placeholder header, rewritten below (same size)
                offsets.append(0)
                for i, (label, data) in enumerate(samples, start=1):
                    if labels and label < labels[-1]:
                        raise RecordIOError("export_recordio: samples must be grouped by label in increasing order")
                    offsets.append(f.tell())
                    f.write(frame(pack_record(float(label), data, i)))
                    labels.append(int(label))
                n = len(labels)
                first: dict[int, int] = {}
                for i, label in enumerate(labels, start=1):
                    first.setdefault(label, i)
                if sorted(first) != list(range(len(first))):
                    raise RecordIOError("export_recordio: labels must be contiguous 0..K-1")
                starts = [first[k] for k in range(len(first))] + [n + 1]
                for k in range(len(first)):  # identity records: [first image, end)
                    offsets.append(f.tell())
                    f.write(frame(pack_record([float(starts[k]), float(starts[k + 1])], b"", n + 1 + k)))
                f.seek(0)
                f.write(frame(pack_record([float(n + 1), float(n + 1 + len(first))], b"", 0)))
            Path(tmp_idx).write_text("".join(f"{i}\t{o}\n" for i, o in enumerate(offsets)))
            idx_path.unlink(missing_ok=True)
        # leaving the inner block renamed the .rec into place; leaving the outer one renames the .idx
    return {"images": n, "identities": len(first)}


def read_index(prefix) -> dict[int, int]:
    idx_path = rec_idx(prefix)[1]
    idx = {}
    try:
        text = idx_path.read_text(encoding="ascii")
    except UnicodeDecodeError as e:
        raise RecordIOError(f"{idx_path}: not a text index (byte {e.start} is not ASCII)") from None
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            parts = line.split("\t")
            if len(parts) != 2 or not all(x.strip().isdigit() for x in parts):
                raise RecordIOError(f"{idx_path}:{n}: expected '<index>\\t<offset>' (two non-negative integers)")
            idx[int(parts[0])] = int(parts[1])
    return idx


class RecordIOReader:
    """One .rec/.idx pair, the file kept open: image_indices() in file order, record(i) -> (label, bytes),
    read(i) -> bytes, records() -> (i, label, bytes). insightface's header and identity records are not
    images; without a header (flag 0 in record 0) every record is an image."""

    def __init__(self, prefix):
        self.path, idx_path = rec_idx(prefix)
        self.index = read_index(prefix)
        if not self.index:
            raise RecordIOError(f"{idx_path} is empty")
        self.f = open(self.path, "rb")

    def close(self) -> None:
        self.f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def image_indices(self) -> list[int]:
        flag, label, _, _ = unpack_record(read_frame(self.f, self.index[min(self.index)]))
        if flag <= 0:
            return sorted(self.index)
        # the header's first identity record ends the images: bounded by the index, whatever the header claims
        end = _label(label[0], self.path, min(self.index))
        if not 1 <= end <= max(self.index) + 1:
            raise RecordIOError(f"{self.path}: header record says images end at {end}, outside the index (0..{max(self.index)})")
        return [i for i in sorted(self.index) if 1 <= i < end]

    def record(self, i: int) -> tuple[int, bytes]:
        if i not in self.index:
            raise FileNotFoundError(f"{self.path} has no record {i}")
        flag, label, _, data = unpack_record(read_frame(self.f, self.index[i]))
        return _label(label[0] if flag > 0 else label, self.path, i), data

    def read(self, i: int) -> bytes:
        return self.record(i)[1]

    def records(self) -> Iterator[tuple[int, int, bytes]]:
        """(record index, label, image bytes) of every image record, in index order."""
        for i in self.image_indices():
            yield (i, *self.record(i))


def _label(v, path: Path, i: int) -> int:
    """A record's label as an int; NaN, infinite or negative labels are an error naming the record."""
    v = float(v)
    if not np.isfinite(v) or v < 0 or v != int(v):
        raise RecordIOError(f"{path}: record {i} has label {v!r}, not a class index")
    return int(v)


def read_recordio(prefix) -> Iterator[tuple[int, bytes]]:
    """(label, image bytes) of every image record, in index order."""
    with RecordIOReader(prefix) as r:
        for _, label, data in r.records():
            yield label, data


def recordio_record(prefix, i: int) -> tuple[int, bytes]:
    """Random access: (label, image bytes) of record i."""
    with RecordIOReader(prefix) as r:
        return r.record(i)


def image_ext(data: bytes) -> str:
    return "png" if data[:8] == b"\x89PNG\r\n\x1a\n" else "jpg"


def export_imagefolder(samples: Iterable[tuple[int, str, bytes]], root) -> dict:
    """samples: (label, key, image bytes) -> root/<label:06d>/<key>.<jpg|png>, bytes unchanged; class
    folders sort in label order, so torchvision's ImageFolder gives the same labels."""
    root = Path(root)
    n, classes = 0, set()
    for label, key, data in samples:
        d = root / f"{int(label):06d}"
        d.mkdir(parents=True, exist_ok=True)
        with atomic_path(d / f"{key}.{image_ext(data)}") as tmp:
            Path(tmp).write_bytes(data)
        n += 1; classes.add(label)
    return {"images": n, "identities": len(classes)}


def imagefolder_entries(root) -> Iterator[tuple[str | None, Path, str | None]]:
    """(class name, path, why it is not read) for every entry of an ImageFolder root, in sorted order; the
    reason is None for an image to read. Nothing is passed over without one: files outside a class folder,
    other file types (.gif, .tiff, .heic...), hidden names, folders inside a class folder, FIFOs and other
    non-files, and empty class folders each come out with their reason, so an import can account for every
    input. A symlinked class folder or image that leads out of the root is an error naming it: an import reads
    only what lies inside the folder it was given (a link to /etc/passwd would otherwise be read)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: ImageFolder root not found")
    inside = root.resolve()

    def check(path: Path) -> Path:
        if path.is_symlink() and not path.resolve().is_relative_to(inside):
            raise ValueError(f"{path}: a symlink out of the ImageFolder root {root} (copy the file in instead)")
        return path
    for top in sorted(root.iterdir()):
        if top.name.startswith("."):
            yield None, top, "hidden name (starts with '.')"
        elif check(top).is_dir():
            inner = sorted(top.iterdir())
            if not inner:
                yield top.name, top, "empty class folder"
            for f in inner:
                yield top.name, f, _why_not_read(check(f))
        else:
            yield None, top, "outside a class folder (root/<class>/<image>)" if top.is_file() else "not a regular file"


def _why_not_read(f: Path) -> str | None:
    if f.name.startswith("."):
        return "hidden name (starts with '.')"
    if f.is_dir():
        return "a folder inside a class folder (a class folder holds its images directly)"
    if not f.is_file():
        return "not a regular file"
    if f.suffix.lower() not in IMAGE_EXTS:
        return f"not an image type imports read ({f.suffix.lower() or 'no extension'}; they read {' '.join(IMAGE_EXTS)})"
    return None


def read_imagefolder(root) -> Iterator[tuple[int, str, Path]]:
    """(label, class name, image path) for every image file, classes in sorted order (nothing is read);
    what is not an image in a class folder is passed over (imagefolder_entries says why)."""
    entries = [(c, f) for c, f, why in imagefolder_entries(root) if why is None]
    label = {c: i for i, c in enumerate(sorted({c for c, _ in entries}))}
    for c, f in entries:
        yield label[c], c, f


def _safe_key(text: str, max_bytes: int = 64) -> str:
    """WebDataset keys hold no dots or slashes; a long one is cut and given a hash of the whole, so
    '<key>.<ext>' stays within a USTAR tar name (100 bytes) whatever the scraped name was."""
    key = "".join(c if c.isalnum() or c in "-_" else "_" for c in text)
    if len(key.encode()) <= max_bytes:
        return key
    head = key
    while len(head.encode()) > max_bytes - 13:
        head = head[:-1]
    return f"{head}_{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def source_members(spec: str, root: Path, p: dict) -> tuple[Path, list[list], list[dict]]:
    """align.train_source -> (the file the align tasks read and hash, [[key, member, meta], ...] for every
    kept image, [rejection row, ...] for every other input). Kept: after align's per-person limits (min/max
    images per person, max people; people in sorted order, a person's images in file order). imagefolder takes a
    folder or a zip/tar archive of one (an image's class is its parent folder's name; unsafe archives are
    refused, tasks/archives.py). Every entry of the source ends in one list or the other, with its reason."""
    kind, _, rel = spec.partition(":")
    path = (root / rel) if not Path(rel).is_absolute() else Path(rel)
    people: dict[str, list] = {}
    skipped: list[dict] = []

    def skip(name: str, identity: str | None, reason: str, member: str | None = None):
        skipped.append({"key": _safe_key(name), "source": member or f"{rel}/{name}", "reason": reason,
                        "split": "train", "identity": identity, "fold": 0})
    if kind == "recordio":
        rec, idx = rec_idx(path)
        if not rec.is_file() or not idx.is_file():
            raise FileNotFoundError(f"align.train_source: {rec} / {idx.name} not found")
        with RecordIOReader(path) as r:
            for i, label, _ in r.records():
                people.setdefault(f"id{label:07d}", []).append((f"rec{i:09d}", i))
        source = rec
    elif kind == "imagefolder" and is_archive(path):  # a zip/tar of class folders, read in place
        source = path
        with ArchiveImages(path) as a:
            hidden = lambda parts: any(x.startswith(".") or x == "__MACOSX" for x in parts)  # noqa: E731  (resource forks)
            visible = [PurePosixPath(n).parts for n in a.names if not hidden(PurePosixPath(n).parts)]
            depth = 0  # folders that wrap the class folders (`zip -r x.zip tree/` puts everything under tree/)
            while (visible and all(len(v) > depth + 1 and v[depth] == visible[0][depth] for v in visible)
                   and any(len(v) > depth + 2 for v in visible)):  # a lone class folder is a class, not a wrapper
                depth += 1
            for name in a.names:
                parts = PurePosixPath(name).parts
                rel = parts[depth:]
                if hidden(parts):
                    skip(name, None, "hidden name (starts with '.' or is __MACOSX)", name)
                elif len(rel) < 2:
                    skip(name, None, "outside a class folder (root/<class>/<image>)", name)
                elif len(rel) > 2:
                    skip(name, rel[0], "a folder inside a class folder (a class folder holds its images directly)", name)
                elif PurePosixPath(name).suffix.lower() not in IMAGE_EXTS:
                    ext = PurePosixPath(name).suffix.lower() or "no extension"
                    skip(name, rel[0], f"not an image type imports read ({ext}; they read {' '.join(IMAGE_EXTS)})", name)
                else:
                    people.setdefault(rel[0], []).append((_safe_key(f"{rel[0]}_{PurePosixPath(name).stem}"), name))
    elif kind == "imagefolder":
        source = path
        for name, f, why in imagefolder_entries(path):
            if why is None:
                people.setdefault(name, []).append((_safe_key(f"{name}_{f.stem}"), f))
            else:
                skip(f.relative_to(path).as_posix(), name, why)
    else:
        raise ValueError(f"align.train_source: unknown kind {kind!r}")
    lo, hi, most = p["min_images_per_person"], p["max_images_per_person"], p["max_train_people"]
    enough = [n for n in sorted(people) if len(people[n]) >= lo]
    keep = enough[:most]
    for n in sorted(people):
        why = (f"its person has {len(people[n])} images, below align.min_images_per_person ({lo})" if len(people[n]) < lo else
               f"its person is beyond align.max_train_people ({most})" if n not in keep else None)
        for i, (key, member) in enumerate(people[n]):
            if why or i >= hi:
                skip(key, n, why or f"beyond align.max_images_per_person ({hi})", _member_name(member, path, rel))
    members = [[key, member, {"split": "train", "identity": n, "fold": 0}]
               for n in keep for key, member in people[n][:hi]]
    if not members:  # said before align touches any output (not as a later "no head pose" error)
        reasons = dict(Counter(r["reason"] for r in skipped).most_common(3))
        raise InputError(f"align.train_source {spec}: no image to train on (root/<class>/<image>, align's per-person "
                         f"limits); of {len(skipped)} entries: {reasons}")
    return source, _distinct_keys(members, source), skipped


def _member_name(member, path: Path, rel: str) -> str:
    """A rejection row's `source`: the file under the import's own name (as align's `source` column), the
    archive member, or the RecordIO record index."""
    if isinstance(member, Path):
        return f"{rel}/{member.relative_to(path).as_posix()}"
    return str(member)


def _distinct_keys(members: list[list], root: Path) -> list[list]:
    """Scraped names that sanitise alike ('photo 1.jpg', 'photo_1.png') get a suffix from their member
    name's hash, so every input keeps its own key and none is lost or overwritten."""
    seen: dict[str, int] = {}
    for m in members:
        seen[m[0]] = seen.get(m[0], 0) + 1
    for m in members:
        if seen[m[0]] > 1:
            name = m[1].relative_to(root).as_posix() if isinstance(m[1], Path) else str(m[1])  # not the checkout's path
            m[0] = f"{m[0]}_{hashlib.sha256(name.encode()).hexdigest()[:8]}"
    return members
