"""Load and validate params.yaml: wrong types, out-of-range values and unknown keys stop with the key named.

    python -m flows params --dry-run      # prints the resolved configuration and its hash
    p = load_params("params.yaml")        # dict; raises ParamsError("sample.num_identities: ...")

The file is read strictly (`read_yaml`): a key given twice (the flows would take the last, DVC refuses the
file) and YAML aliases (`*name`: a few lines of nested aliases expand to gigabytes) are errors naming the
line, and a file over MAX_BYTES is refused unread.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import yaml


class ParamsError(ValueError):
    pass


MAX_BYTES = 1 << 20  # a params file is a few KB; a larger one is not ours


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses aliases and duplicate mapping keys."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, f"alias *{event.anchor}: aliases are not allowed in params",
                                              event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def read_yaml(text: str, name: str):
    """Parse a params document strictly; any problem is one ParamsError line naming `name`, line and column."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506  (a SafeLoader subclass)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{name}:{mark.line + 1}:{mark.column + 1}" if mark is not None else name
        problem = getattr(e, "problem", None) or str(e)
        raise ParamsError(f"{where}: not valid params YAML ({' '.join(str(problem).split())})") from None


class Spec:
    def __init__(self, kind, lo=None, hi=None, choices=None, item=None, optional=False):
        self.kind, self.lo, self.hi, self.choices, self.item, self.optional = kind, lo, hi, choices, item, optional

    def check(self, key: str, v):
        if v is None:
            if self.optional:
                return None
            raise ParamsError(f"{key}: a value is required")
        if self.kind is list:
            if not isinstance(v, list):
                raise ParamsError(f"{key}: expected a list, got {type(v).__name__} {v!r}")
            return [self.item.check(f"{key}[{i}]", x) for i, x in enumerate(v)]
        if self.kind is float and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        if self.kind is dict:
            if not isinstance(v, dict):
                raise ParamsError(f"{key}: expected a mapping, got {v!r}")
            return {str(k): self.item.check(f"{key}.{k}", x) for k, x in v.items()}
        if not isinstance(v, self.kind) or (self.kind is int and isinstance(v, bool)):
            hint = (" (YAML reads unquoted on/off/yes/no as booleans: quote the word)"
                    if self.kind is str and isinstance(v, bool) else "")
            raise ParamsError(f"{key}: expected {self.kind.__name__}, got {type(v).__name__} {v!r}{hint}")
        if self.kind is float and not math.isfinite(v):  # NaN passes every range check and disables a threshold
            raise ParamsError(f"{key}: {v!r} is not a finite number")
        if self.choices is not None and v not in self.choices:
            raise ParamsError(f"{key}: {v!r} is not one of {list(self.choices)}")
        if self.lo is not None and v < self.lo:
            raise ParamsError(f"{key}: {v!r} is below the minimum {self.lo}")
        if self.hi is not None and v > self.hi:
            raise ParamsError(f"{key}: {v!r} is above the maximum {self.hi}")
        return v


def I(lo=None, hi=None, optional=False):  # noqa: E743
    return Spec(int, lo, hi, optional=optional)


def F(lo=None, hi=None, optional=False):
    return Spec(float, lo, hi, optional=optional)


def S(choices=None, optional=False):
    return Spec(str, choices=choices, optional=optional)


class PathSpec(Spec):
    """A path the pipeline reads or writes: relative to the project and without '..', so params alone never
    point a stage outside it. Data kept elsewhere comes in by a link or copy the user makes under data/."""

    def __init__(self, optional=False):
        super().__init__(str, optional=optional)

    def check(self, key: str, v):
        v = super().check(key, v)
        if v is not None:
            inside_project(key, v)
        return v


def inside_project(key: str, v: str) -> None:
    from pathlib import PurePosixPath, PureWindowsPath
    parts = PurePosixPath(v).parts
    if not v or PurePosixPath(v).is_absolute() or PureWindowsPath(v).is_absolute() or ".." in parts or "\\" in v:
        raise ParamsError(f"{key}: {v!r} is not a path inside the project (relative, without '..'); "
                          "link or copy what lives elsewhere into the project, e.g. under data/")


def P(optional=False):
    return PathSpec(optional=optional)


def L(item):
    return Spec(list, item=item)


FR_ARCH = {"layers": L(I(1)), "widths": L(I(1)), "input_size": I(16, 512), "embedding_dim": I(8, 4096)}
FR_TRAIN = {
    "arch": FR_ARCH,
    "margin": {"kind": S(["cosface", "arcface"]), "s": F(1.0), "m": F(0.0, 1.5)},
    "epochs": I(1), "batch_size": I(2), "lr": F(0.0), "momentum": F(0.0, 1.0), "weight_decay": F(0.0),
    "milestones": L(I(1)), "warmup_steps": I(0), "augment": {"flip": Spec(bool), "crop_scale": F(0.1, 1.0),
                                                            "erase_p": F(0.0, 1.0), "jitter": F(0.0, 1.0)},
    "seed": I(0), "num_workers": I(0),
    # whole identities held out of training to choose the checkpoint (never the benchmarks)
    "val_fraction": F(0.0, 0.5), "val_max_pairs": I(4), "val_every": I(1),
    # data-parallel training under torchrun (tasks/fr_dist.py) when nproc_per_node * nnodes > 1
    "distributed": {"nproc_per_node": I(1), "nnodes": I(1), "rdzv_endpoint": S(optional=True)},
}

SCHEMA = {
    "data": {"dir": P(), "url_base": S(), "sha256": Spec(dict, item=S())},
    "align": {
        "detector": S(["mtcnn", "retinaface"]), "weights_dir": P(), "min_score": F(0.0, 1.0),
        "output_size": I(112, 112), "jpeg_quality": I(50, 100),
        "train_folds": L(I(1, 10)), "eval_folds": L(I(1, 10)),
        "min_images_per_person": I(1), "max_images_per_person": I(1), "max_train_people": I(1),
        "max_pairs_per_fold": I(1, 300), "chunk_size": I(1), "batch_size": I(1), "shard_size": I(1),
        "pose": S(["auto", "pnp", "hopenet"]), "age_estimator": S(["dlib-age"], optional=True),
        # training faces from elsewhere instead of LFW's train folds (tasks/interchange.py); eval stays LFW
        "train_source": S(optional=True), "pre_aligned": Spec(bool),
    },
    "encoder": {"pretrained": P(optional=True), **FR_TRAIN},
    "generator": {
        "method": S(["id3", "cemiface", "idbooth"]), "resolution": I(8, 512), "patch_size": I(1, 8),
        "unet": {"block_out_channels": L(I(1)), "layers_per_block": I(1), "attention_head_dim": I(1),
                 "norm_num_groups": I(1), "identity_in_time": Spec(bool),
                 "attention": L(Spec(bool))},
        "conditioner_dims": L(I(1)), "cond_drop": F(0.0, 1.0), "steps": I(1), "batch_size": I(1),
        "beta_schedule": S(["linear", "scaled_linear", "squaredcos_cap_v2"]), "snr_gamma": F(0.0, optional=True),
        "prediction_type": S(["epsilon", "v_prediction"]),
        "lr": F(0.0), "warmup_steps": I(0), "ema_decay": F(0.0, 1.0), "checkpoint_every": I(1), "lambda_scale": F(0.0),
        "kappa_scale": F(0.0), "id_schedule": S(["logistic", "linear", "constant"]), "num_train_timesteps": I(2),
        "seed": I(0),
        "cemiface": {"steps": I(1, optional=True), "context_dim": I(1), "sim_weight": F(0.0), "sim_grid_step": F(0.001, 1.0)},
        "idbooth": {"base_model": P(optional=True), "base_width": I(8), "vae_steps": I(0), "base_steps": I(0),
                    "kl_weight": F(0.0), "num_identities": I(1), "min_images": I(1), "rank": I(1), "lora_steps": I(1),
                    "lora_lr": F(0.0), "lora_batch_size": I(1), "prior_images": I(1), "prior_steps": I(1, 1000),
                    "prior_guidance": F(0.0), "margin": F(0.0), "id_weight": F(0.0), "face_check": Spec(bool)},
    },
    "sample": {
        "num_identities": I(2), "embeddings_per_identity": I(1), "images_per_embedding": I(1),
        "v_low": F(-1.0, 1.0), "v_high": F(-1.0, 1.0), "anchor_iters": I(0), "anchors": S(["tammes", "random"]),
        "privacy_threshold": F(-1.0, 1.0), "sampler": S(["ddim", "dpmsolver++", "ddpm"]), "num_inference_steps": I(1, 1000),
        "guidance_scale": F(0.0), "id_weight": F(0.0), "beta": F(0.0), "guidance_schedule": S(["x0", "constant"]),
        "guidance_gradient": S(["xt", "x0"]), "guidance_substeps": I(1, 100),
        "block_size": I(1), "batch_size": I(1),
        "seed": I(0),
        "cemiface": {"m": L(F(-1.0, 1.0)), "inquiry": S(["anchors", "real"]), "inquiry_max_cosine": F(-1.0, 1.0)},
        "idbooth": {"num_inference_steps": I(1, 1000), "sampler": S(["ddim", "dpmsolver++", "ddpm"]), "guidance_scale": F(0.0),
                    "poses": L(S()), "backgrounds": L(S()), "align": Spec(bool), "align_min_score": F(0.0, 1.0)},
    },
    "package": {"shard_size": I(1), "image_format": S(["png", "jpg"]),
                # the filters (flows/package.py); an unset threshold is the cosine real impostor identity pairs
                # reach at the false-match rate privacy_fmr (tasks/filters.py)
                "privacy_threshold": {"encoder": F(-1.0, 1.0, optional=True), "judge": F(-1.0, 1.0, optional=True)},
                "privacy_fmr": F(0.0, 1.0),
                "uniqueness": S(["drop", "merge", "keep"]), "unique_radius": F(-1.0, 1.0, optional=True),
                "min_consistency": F(-1.0, 1.0), "face_filter": Spec(bool), "min_images_per_identity": I(1),
                "judge_images_per_identity": I(0), "grid_identities": I(1), "grid_images": I(1)},
    "train_fr": FR_TRAIN,
    # where fan-out tasks run (flows/runners.py); not a stage param: it never changes what a stage writes
    "execution": {"runner": S(["threads", "dask"]), "address": S(optional=True), "workers": I(1, optional=True),
                  "gpus_per_task": I(0)},
    "evaluate": {"folds": I(2), "far": L(F(0.0, 1.0)), "benchmarks_dir": P(), "synthetic_label": S(optional=True),
                 "judge_max_identities": I(1), "unique_radius": F(-1.0, 1.0), "hist_pairs": I(100),
                 "grid_identities": I(1), "grid_images": I(1)},
}


def _validate(spec, value, key: str):
    if isinstance(spec, dict):
        if not isinstance(value, dict):
            raise ParamsError(f"{key or 'params'}: expected a mapping, got {value!r}")
        unknown = sorted(set(value) - set(spec))
        if unknown:
            raise ParamsError(f"{key + '.' if key else ''}{unknown[0]}: unknown key (expected one of {sorted(spec)})")
        missing = sorted(set(spec) - set(value))
        if missing:
            raise ParamsError(f"{key + '.' if key else ''}{missing[0]}: missing key")
        return {k: _validate(spec[k], value[k], f"{key}.{k}" if key else k) for k in spec}
    return spec.check(key, value)


LFW_FILES = ("lfw-deepfunneled.zip", "pairs.txt", "people.txt")  # what the align stage reads from data.dir


def _check_data(d: dict) -> None:
    """data.sha256 names plain files (a name like ../../x would place a download outside data.dir) with a
    SHA-256 each, and covers every file the pipeline reads (an empty mapping would let any file through)."""
    for name, sha in d["sha256"].items():
        if not name or name in (".", "..") or any(c in name for c in "/\\\0"):
            raise ParamsError(f"data.sha256.{name}: a file name inside data.dir, without folders")
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha.lower()):
            raise ParamsError(f"data.sha256.{name}: {sha!r} is not a SHA-256 (64 hex digits)")
    missing = [f for f in LFW_FILES if f not in d["sha256"]]
    if missing:
        raise ParamsError(f"data.sha256: no checksum for {', '.join(missing)} (every file the pipeline reads is verified)")


def validate(raw: dict) -> dict:
    p = _validate(SCHEMA, raw, "")
    _check_data(p["data"])
    if set(p["align"]["train_folds"]) & set(p["align"]["eval_folds"]):
        raise ParamsError("align.eval_folds: must not share a fold with align.train_folds (folds are person-disjoint)")
    g = p["generator"]
    if g["resolution"] % g["patch_size"] or (g["resolution"] // g["patch_size"]) % 2 ** (len(g["unet"]["block_out_channels"]) - 1):
        raise ParamsError(f"generator.patch_size: resolution {g['resolution']} / patch_size {g['patch_size']} must be a whole "
                          f"number the UNet's {len(g['unet']['block_out_channels']) - 1} downsamplings divide")
    if len(g["unet"]["attention"]) != len(g["unet"]["block_out_channels"]):
        raise ParamsError(f"generator.unet.attention: one true/false per level of generator.unet.block_out_channels "
                          f"({len(g['unet']['block_out_channels'])}), got {len(g['unet']['attention'])}")
    if len(p["generator"]["conditioner_dims"]) < 1:
        raise ParamsError("generator.conditioner_dims: needs at least one layer width")
    step = p["generator"]["cemiface"]["sim_grid_step"]
    if abs(round(2 / step) * step - 2) > 1e-6:
        raise ParamsError(f"generator.cemiface.sim_grid_step: {step} does not divide [-1, 1] evenly (the paper: 0.04)")
    if not p["sample"]["cemiface"]["m"]:
        raise ParamsError("sample.cemiface.m: needs at least one similarity")
    if p["sample"]["v_low"] > p["sample"]["v_high"]:
        raise ParamsError("sample.v_low: must not exceed sample.v_high")
    src = p["align"]["train_source"]
    if src is not None and src.partition(":")[0] not in ("imagefolder", "recordio"):
        raise ParamsError(f"align.train_source: {src!r} is not imagefolder:<folder> or recordio:<prefix of .rec/.idx>")
    if src is not None:
        inside_project("align.train_source", src.partition(":")[2])
    if p["align"]["pre_aligned"] and src is None:
        raise ParamsError("align.pre_aligned: applies to align.train_source only (LFW's photos are not aligned)")
    for sec in ("encoder", "train_fr"):
        if len(p[sec]["arch"]["layers"]) != len(p[sec]["arch"]["widths"]):
            raise ParamsError(f"{sec}.arch.widths: needs one width per entry of {sec}.arch.layers")
        d = p[sec]["distributed"]
        if d["nnodes"] > 1 and not d["rdzv_endpoint"]:
            raise ParamsError(f"{sec}.distributed.rdzv_endpoint: needed when nnodes > 1 (host:port every node reaches)")
        if p[sec]["batch_size"] % (d["nproc_per_node"] * d["nnodes"]):
            raise ParamsError(f"{sec}.batch_size: {p[sec]['batch_size']} does not divide over "
                              f"{d['nproc_per_node'] * d['nnodes']} processes (distributed.nproc_per_node x nnodes)")
    pk = p["package"]  # NaN passes every range check: the package filters' numbers must be finite
    for key, v in [("privacy_fmr", pk["privacy_fmr"]), ("unique_radius", pk["unique_radius"]),
                   ("min_consistency", pk["min_consistency"]), *((f"privacy_threshold.{m}", t) for m, t in pk["privacy_threshold"].items())]:
        if v is not None and not math.isfinite(v):
            raise ParamsError(f"package.{key}: {v!r} is not a finite number")
    if not 0.0 < pk["privacy_fmr"] < 1.0:
        raise ParamsError(f"package.privacy_fmr: {pk['privacy_fmr']!r} is a false-match rate, strictly between 0 and 1")
    return p


def load_params(path="params.yaml") -> dict:
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found")
    if path.stat().st_size > MAX_BYTES:
        raise ParamsError(f"{path}: {path.stat().st_size} bytes, more than a params file's {MAX_BYTES}")
    try:
        text = path.read_text()
    except UnicodeDecodeError as e:
        raise ParamsError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    return validate(read_yaml(text, str(path)) or {})


def params_hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()
