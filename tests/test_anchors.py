"""Anchors: the Tammes solver reaches known optima in 3-D and beats random points in 512-D."""
import numpy as np

from tasks.anchors import identity_embeddings, min_angle_deg, random_anchors, tammes_anchors


def test_known_optima_in_3d():
    six, _ = tammes_anchors(6, None, None, 1.0, 1500, seed=0, dim=3)
    assert abs(min_angle_deg(six) - 90.0) < 1.0
    twelve, _ = tammes_anchors(12, None, None, 1.0, 1500, seed=0, dim=3)
    assert abs(min_angle_deg(twelve) - 63.43) < 1.5


def test_beats_random_in_512d_and_keeps_privacy_margin():
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((50, 512)); centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    a, stats = tammes_anchors(200, None, centres, 0.1, 200, seed=0, dim=512)
    r = random_anchors(200, 512, seed=0)
    assert min_angle_deg(a) > min_angle_deg(r) + 5
    assert stats["max_cos_to_real_identity"] < 0.1


def test_identity_embeddings_respect_bounds():
    a = random_anchors(5, 64, seed=1)
    y = identity_embeddings(a, 7, 0.5, 0.7, seed=2)
    cos = np.einsum("nmd,nd->nm", y, a)
    assert y.shape == (5, 7, 64)
    np.testing.assert_allclose(np.linalg.norm(y, axis=2), 1.0, atol=1e-9)
    assert cos.min() >= 0.5 - 1e-9 and cos.max() <= 0.7 + 1e-9


def test_privacy_margin_is_hard_for_tammes_and_random_anchors():
    """Even with no optimisation at all, every anchor ends below the threshold (minus the margin)."""
    import torch
    from tasks.anchors import MARGIN, enforce_margin
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((40, 16)); centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    a, stats = tammes_anchors(30, None, centres, 0.3, 0, seed=0, dim=16)
    assert stats["max_cos_to_real_identity"] <= 0.3 - MARGIN + 1e-9 and stats["projected_for_privacy"] > 0
    x, moved = enforce_margin(torch.as_tensor(random_anchors(30, 16, seed=1)), torch.as_tensor(centres), 0.3)
    assert float((x @ torch.as_tensor(centres).T).max()) <= 0.3 - MARGIN + 1e-9 and moved > 0
    np.testing.assert_allclose(x.norm(dim=1).numpy(), 1.0, atol=1e-9)


def test_unreachable_privacy_margin_is_an_error():
    import pytest
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((500, 3)); centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    with pytest.raises(ValueError, match="privacy margin unreachable"):
        tammes_anchors(4, None, centres, 0.1, 10, seed=0, dim=3)  # 500 caps of 84 degrees cover the 3-D sphere
