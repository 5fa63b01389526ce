"""Torch modules of synthface (no prefect, no dvc): FR backbone, margin heads, ID3 generator parts."""

_LAZY = {"ID3Conditioner", "ID3Pipeline"}


def __getattr__(name):
    # diffusers' from_pretrained resolves custom classes from the top-level package named in model_index.json;
    # imported on first use, so FR training (iresnet, margin) does not pay diffusers' import (seconds per process)
    if name in _LAZY:
        from . import id3
        return getattr(id3, name)
    raise AttributeError(f"module 'models' has no attribute {name!r}")
