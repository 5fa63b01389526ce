"""Torch modules of synthface (no prefect, no dvc): FR backbone, margin heads, the generators' parts.

    pipe = models.load_pipeline("artifacts/generator/pipeline")   # whichever generator.method wrote it
"""
from pathlib import Path

_LAZY = {"ID3Conditioner": "id3", "ID3Pipeline": "id3", "CemiConditioner": "cemiface", "CemiFacePipeline": "cemiface",
         "LoraBank": "idbooth", "IDBoothPipeline": "idbooth", "PatchUNet": "patch_unet"}


def __getattr__(name):
    # diffusers' from_pretrained resolves custom classes from the top-level package named in model_index.json;
    # imported on first use, so FR training (iresnet, margin) does not pay diffusers' import (seconds per process)
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'models' has no attribute {name!r}")


def pipeline_class(path):
    """The generator pipeline class that model_index.json in `path` names; its METHOD is the generator.method."""
    import json
    name = json.loads((Path(path) / "model_index.json").read_text())["_class_name"]
    if name not in _LAZY or not name.endswith("Pipeline"):
        raise ValueError(f"{path}: unknown generator pipeline {name!r}")
    return __getattr__(name)


def load_pipeline(path):
    """The generator pipeline saved in `path`, of the class its model_index.json names."""
    return pipeline_class(path).from_pretrained(path)
