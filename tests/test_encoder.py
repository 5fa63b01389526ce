"""Encoders on disk: the project's IResNet round-trips; facexlib IR-SE50 weights import tensors-only."""
import numpy as np
import pytest
import torch

from tasks.encoder import build, embed, import_facexlib_weights, load_encoder, save_encoder


def test_iresnet_roundtrip_and_flip_fused_embedding(tmp_path):
    cfg = {"kind": "iresnet", "arch": {"layers": [1, 1], "widths": [8, 16], "input_size": 32, "embedding_dim": 24}}
    torch.manual_seed(0)
    m = build(cfg).eval()
    save_encoder(m, cfg, tmp_path)
    loaded = load_encoder(tmp_path)
    imgs = np.random.default_rng(0).integers(0, 256, (5, 112, 112, 3), dtype=np.uint8)
    a, b = embed(m, imgs), embed(loaded, imgs)
    np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    # flip fusion: an image and its mirror get the same embedding
    np.testing.assert_allclose(embed(loaded, imgs[:, :, ::-1].copy()), a, atol=1e-5)


def test_facexlib_irse50_import(tmp_path):
    from facexlib.recognition.arcface_arch import Backbone
    torch.manual_seed(0)
    net = Backbone(num_layers=50, drop_ratio=0.6, mode="ir_se")
    torch.save(net.state_dict(), tmp_path / "arcface_ir_se50.pth")
    model = import_facexlib_weights(tmp_path / "arcface_ir_se50.pth")
    save_encoder(model, {"kind": "facexlib_irse50"}, tmp_path / "enc")
    e = embed(load_encoder(tmp_path / "enc"), np.zeros((2, 112, 112, 3), np.uint8))
    assert e.shape == (2, 512)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        import_facexlib_weights(tmp_path / "missing.pth")
    torch.save({"x": 1, "evil": object()}, tmp_path / "bad.pth")  # not tensors only: refused by weights_only
    with pytest.raises(Exception):
        import_facexlib_weights(tmp_path / "bad.pth")
