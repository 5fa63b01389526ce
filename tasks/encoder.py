"""Identity encoders on disk: save, load (safetensors + config.json) and embed with flip fusion.

Two kinds: "iresnet" (trained by this project, models/iresnet.py) and "facexlib_irse50" (facexlib's
ArcFace IR-SE50 weights, loaded with weights_only=True). Both take RGB in [-1, 1] and return 512/any-d.

    enc = load_encoder("artifacts/encoder")           # eval mode, frozen
    e = embed(enc, images_uint8_nhwc)                  # L2-normalised, image + flip summed
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F

from models.iresnet import IResNet
from .io import atomic_path, write_json


class FacexlibIRSE50(nn.Module):
    """facexlib's ArcFace IR-SE50 (112 px input) behind the same interface as IResNet."""

    input_size = 112

    def __init__(self):
        super().__init__()
        from facexlib.recognition.arcface_arch import Backbone
        self.net = Backbone(num_layers=50, drop_ratio=0.6, mode="ir_se")

    def forward(self, x):
        if x.shape[-1] != 112:
            x = F.interpolate(x, size=(112, 112), mode="bilinear", align_corners=False, antialias=True)
        return self.net(x)


def build(config: dict) -> nn.Module:
    if config["kind"] == "iresnet":
        a = config["arch"]
        return IResNet(tuple(a["layers"]), tuple(a["widths"]), a["input_size"], a["embedding_dim"])
    if config["kind"] == "facexlib_irse50":
        return FacexlibIRSE50()
    raise ValueError(f"unknown encoder kind {config['kind']!r}")


def save_encoder(model: nn.Module, config: dict, out_dir: Path) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(out_dir / "encoder.safetensors") as tmp:
        save_file(state, str(tmp))
    write_json(out_dir / "config.json", config)


def import_facexlib_weights(path: Path) -> nn.Module:
    """Load facexlib's arcface_ir_se50.pth safely (tensors only) into FacexlibIRSE50."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: encoder.pretrained names a file that does not exist")
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    model = FacexlibIRSE50()
    model.net.load_state_dict(state, strict=True)
    return model


def load_encoder(enc_dir: Path, device: str = "cpu") -> nn.Module:
    enc_dir = Path(enc_dir)
    config = json.loads((enc_dir / "config.json").read_text())
    model = build(config)
    model.load_state_dict(load_file(str(enc_dir / "encoder.safetensors")))
    model.eval().requires_grad_(False)
    return model.to(device)


def to_unit_range(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 N x H x W x 3 -> float N x 3 x H x W in [-1, 1] (insightface's (x/255 - 0.5) / 0.5)."""
    t = torch.as_tensor(images)
    return t.permute(0, 3, 1, 2).float().div(255).sub(0.5).div(0.5).contiguous()


@torch.inference_mode()
def embed(model: nn.Module, images: np.ndarray, batch_size: int = 256, flip: bool = True) -> np.ndarray:
    """Embeddings of uint8 NHWC images: model(x) + model(flip(x)), then L2-normalised."""
    dev = next(model.parameters()).device
    out = []
    for i in range(0, len(images), batch_size):
        x = to_unit_range(images[i:i + batch_size]).to(dev)
        e = model(x)
        if flip:
            e = e + model(torch.flip(x, dims=[3]))
        out.append(F.normalize(e.float(), dim=1).cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 1), np.float32)
