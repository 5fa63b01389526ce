"""CemiFace on tiny real components: the SimMat loss and its grid, AdaGN, save/load through models.load_pipeline,
per-image-seeded sampling at a similarity m, real inquiry selection, and training on real LFW faces."""
import numpy as np
import pytest
import torch
from torch.nn import functional as F

from models import CemiFacePipeline, load_pipeline
from models.cemiface import cemiface_loss, similarity_grid
from models.iresnet import IResNet
from tasks.anchors import real_inquiries
from tasks.sample import plan_identities, render_block
from tasks.train_generator import build_pipeline, train_generator
from test_id3 import POOL, S, real_stats
from test_train_generator import G, lfw_face_shards

P = {"method": "cemiface", "resolution": 16, "unet": {"block_out_channels": [32, 32], "layers_per_block": 1,
                                                      "attention_head_dim": 8, "norm_num_groups": 8},
     "conditioner_dims": [32], "num_train_timesteps": 1000,
     "cemiface": {"context_dim": 32, "sim_weight": 0.05, "sim_grid_step": 0.04}}
SC = {**S, "id_weight": 100.0, "beta": 0.1, "cemiface": {"m": [0.0], "inquiry": "anchors", "inquiry_max_cosine": 0.3}}


def tiny():
    torch.manual_seed(0)
    return build_pipeline(P, embedding_dim=16), IResNet((1, 1), (8, 16), 16, 16).eval().requires_grad_(False)


def test_similarity_grid():
    g = similarity_grid(0.04)
    assert len(g) == 51 and g[0] == -1 and g[-1] == 1 and torch.allclose(g[26] - g[25], torch.tensor(0.04))
    with pytest.raises(ValueError, match="does not divide"):
        similarity_grid(0.03)


def test_loss_is_mse_plus_simmat_and_trains_generator_not_encoder():
    pipe, enc = tiny()
    assert isinstance(pipe, CemiFacePipeline) and pipe.unet.config.resnet_time_scale_shift == "scale_shift"  # AdaGN
    f = lambda x: F.normalize(enc(x), dim=1)  # noqa: E731
    x0 = torch.rand(6, 3, 16, 16) * 2 - 1
    y = f(x0)  # self-reconstruction: the inquiry is the training face itself
    out = cemiface_loss(pipe.unet, pipe.conditioner, f, pipe.scheduler, x0, y, torch.Generator().manual_seed(0))
    out["loss"].backward()
    assert float(out["loss"].detach()) == pytest.approx(float(out["mse"] + 0.05 * out["simmat"]), rel=1e-5)
    assert 0 <= float(out["simmat"]) <= 4 and -1 <= float(out["id"]) <= 1
    cond = pipe.conditioner
    assert cond.f1.weight.grad is not None and cond.f2.weight.grad is not None and pipe.unet.conv_in.weight.grad is not None
    assert all(p.grad is None for p in enc.parameters())
    # sim_weight 0: the plain diffusion loss; the same draws give the same MSE
    plain = cemiface_loss(pipe.unet, cond, f, pipe.scheduler, x0, y, torch.Generator().manual_seed(0), sim_weight=0.0)
    assert float(plain["loss"]) == pytest.approx(float(out["mse"]), rel=1e-5)


def test_conditioner_reads_similarity():
    pipe, _ = tiny()
    y = F.normalize(torch.randn(2, 16), dim=1)
    a, b = pipe.conditioner(y, torch.tensor([0.0, 0.0])), pipe.conditioner(y, torch.tensor([0.0, 1.0]))
    assert a.shape == (2, 1, 32) and torch.equal(a[0], b[0]) and not torch.equal(a[1], b[1])


def test_save_load_and_subset_regeneration(tmp_path):
    pipe, _ = tiny()
    pipe.save_pretrained(tmp_path / "pipe")
    loaded = load_pipeline(tmp_path / "pipe")
    assert type(loaded) is CemiFacePipeline and loaded.METHOD == "cemiface"
    plan = plan_identities(real_stats(), SC, POOL, "cemiface")
    assert plan["embeddings"].shape == (3, 1, 16) and {r["m"] for r in plan["rows"]} == {0.0}
    assert len(plan["rows"]) == 3 * 2 and "yaw" not in plan["rows"][0]
    # id_weight in [sample] is ID3's: CemiFace samples without guidance, so no encoder is needed
    full = render_block(pipe, None, plan, [0, 1, 2], SC)
    again = render_block(loaded, None, plan, [0, 1, 2], SC)
    assert [s["png"] for s in full] == [s["png"] for s in again]
    part = render_block(loaded, None, plan, [2], SC)
    assert [s["png"] for s in part] == [s["png"] for s in full if s["identity"] == 2]
    # m is a condition: another similarity renders other images from the same seeds
    other = plan_identities(real_stats(), {**SC, "cemiface": {**SC["cemiface"], "m": [0.5, -0.5]}}, POOL, "cemiface")
    assert [r["m"] for r in other["rows"][:2]] == [0.5, -0.5] and [r["seed"] for r in other["rows"]] == [r["seed"] for r in plan["rows"]]
    assert [s["png"] for s in render_block(pipe, None, other, [0], SC)] != [s["png"] for s in full if s["identity"] == 0]
    # the pipeline outside the DAG: the same images from the anchors file and seed
    np.save(tmp_path / "anchors.npy", plan["anchors"])
    imgs, rows = loaded.sample_anchors(tmp_path / "anchors.npy", images_per_identity=2, m=[0.0], seed=SC["seed"],
                                       identities=[1], batch_size=SC["batch_size"], output_type="np", num_inference_steps=3)
    assert [r["key"] for r in rows] == [s["key"] for s in full if s["identity"] == 1]


def test_real_inquiries_are_distinct_and_far_apart():
    rng = np.random.default_rng(0)
    e = rng.standard_normal((60, 16))
    labels = np.arange(60) // 3
    x, stats = real_inquiries(8, e, labels, 0.3, seed=0)
    c = x @ x.T
    np.fill_diagonal(c, -1)
    assert x.shape == (8, 16) and c.max() < 0.3 and stats["max_pairwise_cos"] == pytest.approx(c.max())
    assert len(set(stats["real_identities"])) == 8
    plan = plan_identities({"embeddings": e, "labels": labels}, {**SC, "num_identities": 8,
                                                                  "cemiface": {**SC["cemiface"], "inquiry": "real"}}, POOL, "cemiface")
    assert np.allclose(plan["anchors"], x)
    with pytest.raises(ValueError, match="only .* real training faces"):
        real_inquiries(8, e, labels, -0.9, seed=0)


def test_training_on_real_faces_resumes(tmp_path, lfw_files):
    shards, emb = lfw_face_shards(tmp_path, lfw_files)
    enc = IResNet((1, 1), (8, 16), 16, 16).eval().requires_grad_(False)
    p = {**G, **P, "steps": 2, "batch_size": 4, "checkpoint_every": 1}
    logs = []
    pipe, stats = train_generator(shards, emb, {}, 8, enc, p, tmp_path / "ckpt", log=logs.append)  # no attributes needed
    assert isinstance(pipe, CemiFacePipeline) and stats["steps"] == 2
    assert all(np.isfinite(h["simmat"]) for h in stats["history"])
    fresh = build_pipeline(P, embedding_dim=16)
    assert not torch.equal(pipe.conditioner.f2.weight, fresh.conditioner.f2.weight)
    _, stats = train_generator(shards, emb, {}, 8, enc, {**p, "steps": 3}, tmp_path / "ckpt", log=logs.append)
    assert stats["resumed_from"] == 2 and any("resumed" in s for s in logs)
