"""ID3 generator on tiny real components: loss gradients, diffusers save/load, deterministic sampling."""
import numpy as np
import torch
from torch.nn import functional as F

from models import ID3Pipeline
from models.iresnet import IResNet
from tasks.sample import plan_identities, render_block
from tasks.train_generator import build_pipeline
from models.id3 import id3_loss

P = {"method": "id3", "resolution": 16, "unet": {"block_out_channels": [32, 32], "layers_per_block": 1, "attention_head_dim": 8,
                                "norm_num_groups": 8},
     "conditioner_dims": [32, 32, 32], "num_train_timesteps": 1000}
S = {"num_identities": 3, "embeddings_per_identity": 2, "images_per_embedding": 1, "v_low": 0.7, "v_high": 0.9,
     "anchors": "tammes", "anchor_iters": 10, "privacy_threshold": 0.9, "sampler": "ddim", "num_inference_steps": 3,
     "guidance_scale": 1.0, "id_weight": 0.0, "beta": 0.0, "guidance_schedule": "x0", "batch_size": 4, "seed": 0}
POOL = np.random.default_rng(1).uniform(-1, 1, (20, 4))  # yaw, pitch, roll, age


def tiny():
    torch.manual_seed(0)
    pipe = build_pipeline(P, embedding_dim=16)
    enc = IResNet((1, 1), (8, 16), 16, 16).eval().requires_grad_(False)
    return pipe, enc


def real_stats(n=12, d=16):
    rng = np.random.default_rng(0)
    e = rng.standard_normal((n, d)); e /= np.linalg.norm(e, axis=1, keepdims=True)
    return {"embeddings": e, "labels": np.arange(n) // 3}


def test_loss_trains_generator_not_encoder():
    pipe, enc = tiny()
    x0 = torch.rand(4, 3, 16, 16) * 2 - 1
    y = F.normalize(torch.randn(4, 16), dim=1)
    out = id3_loss(pipe.unet, pipe.conditioner, lambda x: F.normalize(enc(x), dim=1), pipe.scheduler, x0, y,
                   torch.zeros(4, 4), torch.Generator().manual_seed(0), cond_drop=0.0)
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and -1 <= float(out["id"]) <= 1
    assert pipe.unet.conv_in.weight.grad is not None and pipe.conditioner.mlp[0].weight.grad is not None
    assert all(p.grad is None for p in enc.parameters())


def test_save_load_and_subset_regeneration(tmp_path):
    pipe, enc = tiny()
    pipe.save_pretrained(tmp_path / "pipe")
    loaded = ID3Pipeline.from_pretrained(tmp_path / "pipe")
    plan = plan_identities(real_stats(), S, POOL)
    full = render_block(pipe, None, plan, [0, 1, 2], S)
    again = render_block(loaded, None, plan, [0, 1, 2], S)
    assert [s["png"] for s in full] == [s["png"] for s in again]
    for ident in (1, 2):  # alone, at other positions of a batch than in the full run
        part = render_block(loaded, None, plan, [ident], S)
        assert [s["png"] for s in part] == [s["png"] for s in full if s["identity"] == ident]
    assert len({s["seed"] for s in full}) == len(full)


def test_identity_guidance_changes_samples():
    pipe, enc = tiny()
    plan = plan_identities(real_stats(), S, POOL)
    plain = render_block(pipe, enc, plan, [0], S)
    guided = render_block(pipe, enc, plan, [0], {**S, "id_weight": 50.0, "beta": 0.5, "sampler": "dpmsolver++"})
    assert [s["png"] for s in plain] != [s["png"] for s in guided]


def test_time_schedules():
    from models.id3 import time_weight
    t = torch.tensor([1, 500, 1000])
    np.testing.assert_allclose(time_weight(t, 1000), 0.5 * (1 - torch.sigmoid(-t / 1000)), rtol=1e-6)
    np.testing.assert_allclose(time_weight(t, 1000, "linear"), [0.999, 0.5, 0.0], atol=1e-6)
    assert torch.all(time_weight(t, 1000, "constant") == 0.5)
    try:
        time_weight(t, 1000, "cosine")
        raise AssertionError("an unknown schedule must be refused")
    except ValueError as e:
        assert "cosine" in str(e)


def test_guided_sampling_regenerates_any_subset_byte_identically():
    """ID-preserving field + reversed term + CFG on DPM-Solver++: still a pure function of each image's seed."""
    pipe, enc = tiny()
    q = {**S, "id_weight": 20.0, "beta": 0.5, "guidance_scale": 2.0, "sampler": "dpmsolver++"}
    plan = plan_identities(real_stats(), q, POOL)
    full = render_block(pipe, enc, plan, [0, 1, 2], q)
    assert [s["png"] for s in render_block(pipe, enc, plan, [2], q)] == [s["png"] for s in full if s["identity"] == 2]
    assert [s["png"] for s in render_block(pipe, enc, plan, [1, 0], q)] == [s["png"] for s in full if s["identity"] < 2]


def test_pipeline_samples_from_an_anchor_file_like_the_dag(tmp_path):
    """Outside the DAG: from_pretrained + an anchors .npy gives the DAG's images, as PIL or arrays."""
    import io
    from PIL import Image
    pipe, enc = tiny()
    pipe.save_pretrained(tmp_path / "pipe")
    plan = plan_identities(real_stats(), {**S, "id_weight": 10.0, "beta": 0.2}, POOL)
    np.save(tmp_path / "anchors.npy", plan["anchors"])
    q = {**S, "id_weight": 10.0, "beta": 0.2}
    dag = render_block(pipe, enc, plan, [1, 2], q)
    loaded = ID3Pipeline.from_pretrained(tmp_path / "pipe")
    kw = dict(num_inference_steps=S["num_inference_steps"], sampler="ddim", id_weight=10.0, beta=0.2, encoder=enc)
    arrays, rows = loaded.sample_anchors(tmp_path / "anchors.npy", POOL, S["embeddings_per_identity"], S["images_per_embedding"],
                                         S["v_low"], S["v_high"], S["seed"], identities=[1, 2], batch_size=S["batch_size"],
                                         output_type="np", **kw)
    assert [r["key"] for r in rows] == [s["key"] for s in dag]
    for s, a in zip(dag, arrays):
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(s["png"]))), a)
    pil, _ = loaded.sample_anchors(tmp_path / "anchors.npy", POOL, 1, 1, identities=[0], batch_size=2, **kw)
    assert pil[0].size == (16, 16) and pil[0].mode == "RGB"


def test_conditioner_defaults_are_the_papers_mlp():
    from models.id3 import ID3Conditioner
    c = ID3Conditioner()
    assert [m.out_features for m in c.mlp if isinstance(m, torch.nn.Linear)] == [512, 256, 768]
    assert c.mlp[0].in_features == 512 + 3 and c.null(2).shape == (2, 1, 768)


def test_no_identity_loss_ablation_keeps_encoder_out_of_the_graph():
    pipe, enc = tiny()
    calls = []
    def f(x):
        calls.append(torch.is_grad_enabled())
        return F.normalize(enc(x), dim=1)
    x0 = torch.rand(4, 3, 16, 16) * 2 - 1
    y = F.normalize(torch.randn(4, 16), dim=1)
    out = id3_loss(pipe.unet, pipe.conditioner, f, pipe.scheduler, x0, y, torch.zeros(4, 4),
                   torch.Generator().manual_seed(0), cond_drop=0.0, kappa_scale=0.0)
    out["loss"].backward()
    assert calls == [False] and torch.isfinite(out["id"])  # still reported, never differentiated


def test_ddpm_sampler_regenerates_any_subset_byte_identically():
    """Ancestral DDPM draws fresh noise every step: from each image's own seed, so batch position never matters."""
    import yaml
    from conftest import ROOT
    from models.id3 import make_scheduler
    from tasks.params import validate
    pipe, enc = tiny()
    q = {**S, "sampler": "ddpm", "num_inference_steps": 6, "id_weight": 20.0, "beta": 0.5}
    plan = plan_identities(real_stats(), q, POOL)
    full = render_block(pipe, enc, plan, [0, 1, 2], q)
    assert [s["png"] for s in render_block(pipe, enc, plan, [2], q)] == [s["png"] for s in full if s["identity"] == 2]
    assert [s["png"] for s in render_block(pipe, enc, plan, [1, 0], q)] == [s["png"] for s in full if s["identity"] < 2]
    ddim = render_block(pipe, enc, plan, [0], {**q, "sampler": "ddim"})
    assert [s["png"] for s in ddim] != [s["png"] for s in full if s["identity"] == 0]
    sched = make_scheduler("ddpm", pipe.scheduler.config)
    sched.set_timesteps(1000)
    assert len(sched.timesteps) == 1000 and int(sched.timesteps[0]) == 999
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["sample"]["sampler"] = "ddpm"
    assert validate(raw)["sample"]["sampler"] == "ddpm"


def test_jacobian_free_guidance_climbs_the_identity_score_without_a_unet_backward():
    """guidance_gradient x0: the encoder's gradient at x0_hat moves each step's x0_hat (no backward through the
    UNet, which runs in inference mode); more substeps climb further; any subset still renders byte-identically."""
    pipe, enc = tiny()
    plan = plan_identities(real_stats(), S, POOL)
    rows = [r for r in plan["rows"] if r["identity"] == 0]
    f = lambda x: F.normalize(enc(x), dim=1)  # noqa: E731
    y = F.normalize(torch.stack([torch.as_tensor(plan["embeddings"][0, r["embedding"]]).float() for r in rows]), dim=1)
    modes = []
    hook = pipe.unet.register_forward_hook(lambda *_: modes.append(torch.is_inference_mode_enabled()))

    def score(**guidance):
        modes.clear()
        x = torch.stack(pipe.render_rows(plan["embeddings"], plan["anchors"], rows, 4, encoder=enc, sampler="ddim",
                                         num_inference_steps=3, **guidance))
        return float((f(x) * y).sum(1).mean()), set(modes)

    plain, _ = score()
    one, m1 = score(id_weight=5.0, guidance_gradient="x0")
    three, m3 = score(id_weight=5.0, guidance_gradient="x0", guidance_substeps=3)
    _, through = score(id_weight=5.0)  # the formula's gradient, through the UNet
    hook.remove()
    assert plain < one < three, (plain, one, three)
    assert m1 == m3 == {True} and through == {False}
    q = {**S, "id_weight": 5.0, "beta": 0.5, "guidance_gradient": "x0", "guidance_substeps": 2}
    full = render_block(pipe, enc, plan, [0, 1, 2], q)
    assert [s["png"] for s in render_block(pipe, enc, plan, [1], q)] == [s["png"] for s in full if s["identity"] == 1]
