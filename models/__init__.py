"""Torch modules of synthface (no prefect, no dvc): FR backbone, margin heads, ID3 generator parts."""

# diffusers' from_pretrained resolves custom classes from the top-level package named in model_index.json
from .id3 import ID3Conditioner, ID3Pipeline  # noqa: E402,F401
