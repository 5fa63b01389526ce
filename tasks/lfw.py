"""LFW demo data: obtain it (local copy or checksum-verified download) and read its people/pairs lists.

    python -m flows fetch-data      # fills data/lfw from $SYNTHFACE_LFW_DIR, ../shared/datasets/lfw, or the web

Sources are tried in order: $SYNTHFACE_LFW_DIR, the shared folder beside the project, then
`data.url_base` (the official LFW site). Every file is checked against `data.sha256` before use;
a download lands under a temporary name and is renamed only once its checksum matches.
"""
from __future__ import annotations

import os
import shutil
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .io import InputError, atomic_path, sha256_file

ZIP_NAME = "lfw-deepfunneled.zip"


class DataError(RuntimeError):
    pass


def candidate_dirs(project_root: Path) -> list[Path]:
    dirs = []
    if os.environ.get("SYNTHFACE_LFW_DIR"):
        dirs.append(Path(os.environ["SYNTHFACE_LFW_DIR"]))
    dirs.append(project_root.parent / "shared" / "datasets" / "lfw")
    return dirs


def _verify(path: Path, expected: str) -> None:
    got = sha256_file(path)
    if got != expected:
        raise DataError(f"{path}: sha256 {got} does not match the expected {expected}")


def download(url: str, dest: Path, expected_sha256: str, timeout: float = 60.0) -> None:
    """Stream url to dest atomically; raise DataError (and leave nothing behind) on a bad checksum."""
    with atomic_path(dest) as tmp:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r, open(tmp, "wb") as f:
                shutil.copyfileobj(r, f, 1 << 20)
        except OSError as e:
            raise DataError(f"{url}: download failed ({e})") from None
        got = sha256_file(tmp)
        if got != expected_sha256:
            raise DataError(f"{url}: sha256 {got} does not match the expected {expected_sha256}")


def obtain(data_params: dict, project_root: Path, dest: Path | None = None) -> Path:
    """Place every file of data.sha256 into dest (default data.dir), verified; return dest."""
    dest = dest or project_root / data_params["dir"]
    dest.mkdir(parents=True, exist_ok=True)
    for name, sha in sorted(data_params["sha256"].items()):
        target = dest / name
        if target.is_file() and sha256_file(target) == sha:
            continue
        for d in candidate_dirs(project_root):
            src = d / name
            if src.is_file():
                _verify(src, sha)
                with atomic_path(target) as tmp:
                    shutil.copyfile(src, tmp)
                break
        else:
            download(data_params["url_base"].rstrip("/") + "/" + name, target, sha)
    return dest


def verify(data_params: dict, data_dir: Path) -> None:
    for name, sha in sorted(data_params["sha256"].items()):
        p = data_dir / name
        if not p.is_file():
            raise DataError(f"{p}: missing; run `python -m flows fetch-data` (or `make demo`)")
        _verify(p, sha)


def parse_people(path: Path) -> dict[int, dict[str, int]]:
    """people.txt -> {fold (1-based): {name: image count}}."""
    lines = [ln.split() for ln in Path(path).read_text().splitlines() if ln.strip()]
    nfolds, i, folds = int(lines[0][0]), 1, {}
    for f in range(1, nfolds + 1):
        n = int(lines[i][0])
        folds[f] = {name: int(c) for name, c in lines[i + 1:i + 1 + n]}
        i += n + 1
    return folds


@dataclass(frozen=True)
class Pair:
    fold: int
    name_a: str
    idx_a: int
    name_b: str
    idx_b: int

    @property
    def issame(self) -> bool:
        return self.name_a == self.name_b


def _text_lines(path: Path) -> list[tuple[int, str]]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text (byte {e.start})") from None
    return [(n, ln) for n, ln in enumerate(text.splitlines(), 1) if ln.strip()]


def parse_pairs(path: Path) -> list[Pair]:
    """pairs.txt (View 2) -> pairs in file order, each with its 1-based fold. A malformed file is an
    InputError naming the file and line."""
    lines = _text_lines(path)
    head = lines[0][1].split() if lines else []
    if len(head) != 2 or not all(x.isdigit() for x in head):
        raise InputError(f"{path}:{lines[0][0] if lines else 1}: expected the header '<folds> <pairs per half-fold>'")
    nfolds, n = int(head[0]), int(head[1])
    if len(lines) - 1 != 2 * n * nfolds:
        raise InputError(f"{path}: the header promises {nfolds} x {2 * n} pairs, the file holds {len(lines) - 1}")
    out, i = [], 1
    for f in range(1, nfolds + 1):
        for no, text in lines[i:i + 2 * n]:
            ln = text.split()
            if len(ln) == 3 and ln[1].isdigit() and ln[2].isdigit():
                out.append(Pair(f, ln[0], int(ln[1]), ln[0], int(ln[2])))
            elif len(ln) == 4 and ln[1].isdigit() and ln[3].isdigit():
                out.append(Pair(f, ln[0], int(ln[1]), ln[2], int(ln[3])))
            else:
                raise InputError(f"{path}:{no}: expected '<name> <n> <n>' or '<name> <n> <name> <n>'")
        i += 2 * n
    return out


def parse_pair_list(path: Path) -> list[tuple[str, str, bool]]:
    """A pairs file of image paths, one pair a line: '<path a>\t<path b>\t<1|0>' (1: the same person), or
    space-separated when no path holds a space. Paths are relative to the image folder, without '..'."""
    out = []
    for no, text in _text_lines(path):
        parts = text.split("\t") if "\t" in text else text.split()
        if len(parts) != 3 or parts[2].strip() not in ("0", "1"):
            raise InputError(f"{path}:{no}: expected '<path a>\\t<path b>\\t<1|0>'")
        a, b = parts[0].strip(), parts[1].strip()
        for x in (a, b):
            if not x or x.startswith("/") or ".." in Path(x).parts:
                raise InputError(f"{path}:{no}: {x!r} is not a path inside the image folder")
        out.append((a, b, parts[2].strip() == "1"))
    return out


def image_path(name: str, idx: int) -> str:
    return f"lfw-deepfunneled/{name}/{name}_{idx:04d}.jpg"


def select(people_txt: Path, pairs_txt: Path, p: dict) -> tuple[list[tuple[str, str, int]], list[Pair]]:
    """Choose the training images (path, name, fold) and the evaluation pairs from align params.

    Training: people of train_folds with >= min_images_per_person images, the most-photographed first
    (up to max_train_people), first max_images_per_person images each. Evaluation: of each eval fold,
    the first max_pairs_per_fold matched and mismatched pairs, interleaved in file order.
    """
    folds = parse_people(people_txt)
    people = [(name, c, f) for f in p["train_folds"] for name, c in folds[f].items() if c >= p["min_images_per_person"]]
    people.sort(key=lambda x: (-x[1], x[0]))
    people = people[: p["max_train_people"]]
    train = [(image_path(n, i), n, f) for n, c, f in sorted(people, key=lambda x: x[0])
             for i in range(1, min(c, p["max_images_per_person"]) + 1)]
    pairs = []
    for f in p["eval_folds"]:
        fold_pairs = [q for q in parse_pairs(pairs_txt) if q.fold == f]
        same = [q for q in fold_pairs if q.issame][: p["max_pairs_per_fold"]]
        diff = [q for q in fold_pairs if not q.issame][: p["max_pairs_per_fold"]]
        # interleave so that every contiguous protocol fold holds matched and mismatched pairs alike
        pairs += [q for sd in zip(same, diff) for q in sd] + same[len(diff):] + diff[len(same):]
    train_names = {n for _, n, _ in train}
    leaked = sorted(train_names & ({q.name_a for q in pairs} | {q.name_b for q in pairs}))
    if leaked:
        raise DataError(f"evaluation pairs contain training people (e.g. {leaked[0]}): folds are not person-disjoint")
    return train, pairs
