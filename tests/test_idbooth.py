"""ID-Booth on a tiny randomly initialised Stable Diffusion built from configs (no weights downloaded): the
local tokenizer, the diffusers folder round trip, LoRA as the only trainable part, the loss terms; then the
generator.method = idbooth code paths on real LFW faces: base pretraining, one LoRA per identity (resumable),
the saved pipeline, the prompt plan, rendering with the aligner, and subset byte-identity."""
import io

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image
from torch.nn import functional as F

from models import IDBoothPipeline, load_pipeline
from models.idbooth import CLASS_PROMPT, INSTANCE_PROMPT, add_lora, bank_labels, idbooth_loss, tiny_ldm, tiny_tokenizer
from models.iresnet import IResNet
from tasks.align import MTCNNDetector, align_generated
from tasks.sample import plan_identities, render_block
from tasks.train_generator import Blob, missing_blobs, pipeline_files, train_generator, write_pipeline
from test_id3 import POOL, S, real_stats
from test_train_generator import lfw_face_shards


def test_tokenizer_encodes_any_prompt_reversibly():
    tok = tiny_tokenizer()
    for text in (INSTANCE_PROMPT, CLASS_PROMPT, "photo of sks person, looking left, in a park"):
        ids = tok(text).input_ids
        assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id and tok.unk_token_id not in ids[1:-1]
        # CLIP decodes a word-final token with a space after it: compare without spaces
        assert tok.decode(ids, skip_special_tokens=True).replace(" ", "") == text.replace(" ", "")


def test_folder_round_trip_and_lora_is_all_that_trains(tmp_path):
    pipe = tiny_ldm(resolution=32)
    pipe.save_pretrained(tmp_path / "sd")  # the Stable Diffusion 2.1-base folder layout
    assert {p.name for p in (tmp_path / "sd").iterdir()} >= {"model_index.json", "unet", "vae", "text_encoder", "tokenizer", "scheduler"}
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "sd")
    base = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    params = add_lora(pipe.unet, rank=4)
    assert params and all(p.requires_grad for p in params)
    assert sum(p.numel() for p in pipe.unet.parameters() if p.requires_grad) == sum(p.numel() for p in params)
    enc = IResNet((1, 1), (8, 16), 32, 16).eval().requires_grad_(False)
    f = lambda x: F.normalize(enc(x), dim=1)  # noqa: E731
    g = torch.Generator().manual_seed(0)
    x_inst, x_prior = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    out = idbooth_loss(pipe, x_inst, x_prior, f, g)
    out["loss"].backward()
    assert all(p.grad is not None for p in params) and all(p.grad is None for p in enc.parameters())
    assert all(p.grad is None for n, p in pipe.unet.named_parameters() if "lora" not in n)
    assert torch.isfinite(out["loss"].detach()) and 0 <= float(out["triplet"]) <= 3
    # no face found in any decoded x0_hat: the identity term is skipped, the loss is the two MSEs
    out = idbooth_loss(pipe, x_inst, x_prior, f, torch.Generator().manual_seed(0), face_found=torch.zeros(2, dtype=torch.bool))
    assert float(out["loss"].detach()) == pytest.approx(float(out["mse_instance"] + out["mse_prior"]), rel=1e-5)
    # a LoRA step moves the adapted UNet and leaves the base weights as loaded
    opt = torch.optim.SGD(params, lr=1.0)
    opt.step()
    for k, v in pipe.unet.state_dict().items():
        if "lora" not in k:
            assert torch.equal(v, base[k.replace(".base_layer", "")]), k


# the ID-Booth generator of generator.method = idbooth, at test scale: a tiny LDM pretrained for a few steps
IP = {"base_model": None, "base_width": 32, "vae_steps": 2, "base_steps": 2, "kl_weight": 1e-4, "num_identities": 2,
      "min_images": 2, "rank": 4, "lora_steps": 2, "lora_lr": 1e-3, "lora_batch_size": 2, "prior_images": 3, "prior_steps": 2,
      "prior_guidance": 5.0, "margin": 1.0, "id_weight": 1.0, "face_check": False}
GP = {"method": "idbooth", "resolution": 16, "steps": 2, "batch_size": 4, "lr": 3e-4, "checkpoint_every": 1, "seed": 0,
      "cond_drop": 0.5, "idbooth": IP}
SI = {**S, "embeddings_per_identity": 1, "images_per_embedding": 3, "batch_size": 2,
      "idbooth": {"num_inference_steps": 2, "sampler": "ddim", "guidance_scale": 5.0, "poses": ["", "looking left", "smiling"],
                  "backgrounds": ["", "in a park"], "align": True, "align_min_score": 0.9}}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, lfw_files):
    """An ID-Booth generator trained on real LFW faces (two identities), its checkpoint folder and the logs."""
    tmp = tmp_path_factory.mktemp("idbooth")
    shards, _ = lfw_face_shards(tmp, lfw_files)
    enc = IResNet((1, 1), (8, 16), 16, 16).eval().requires_grad_(False)
    logs = []
    pipe, stats = train_generator(shards, {}, {}, 8, enc, GP, tmp / "ckpt", log=logs.append)
    return pipe, stats, shards, enc, tmp, logs


def test_training_personalises_each_real_identity_and_resumes(trained):
    pipe, stats, shards, enc, tmp, logs = trained
    assert isinstance(pipe, IDBoothPipeline) and pipe.bank.config.labels == [0, 1] and stats["identities"] == 2
    assert stats["pretrain"]["vae"]["steps"] == 2 and stats["pretrain"]["unet"]["steps"] == 2
    assert [h["label"] for h in stats["lora_history"]] == [0, 1]
    assert all(np.isfinite(h["loss"]) for h in stats["lora_history"])
    # one LoRA per identity, trained from one shared initialisation into different weights
    k = next(iter(pipe.bank.config.shapes))
    w = getattr(pipe.bank, k.replace(".", "__"))
    assert w.shape[0] == 2 and not torch.equal(w[0], w[1])
    # the saved base UNet is plain (the adapter lives in the bank) and the folder round-trips by its class
    files = pipeline_files(pipe)
    assert "bank/config.json" in files and not any("lora" in name for name in load_file_bytes(files["unet/diffusion_pytorch_model.safetensors"]))
    # a file over max_inline (on Stable Diffusion: GBs of frozen base weights) leaves the result for a
    # content-addressed store; the written folder is the same bytes either way
    biggest = max(files, key=lambda rel: len(files[rel]))
    refs = pipeline_files(pipe, tmp / "blobs", max_inline=len(files[biggest]) - 1)
    assert isinstance(refs[biggest], Blob) and (tmp / "blobs" / refs[biggest].sha256).read_bytes() == files[biggest]
    assert {rel: v for rel, v in refs.items() if rel != biggest} == {rel: v for rel, v in files.items() if rel != biggest}
    write_pipeline(refs, tmp / "pipe", tmp / "blobs")
    assert {rel: (tmp / "pipe" / rel).read_bytes() for rel in files} == files and missing_blobs(refs, tmp / "blobs") == []
    loaded = load_pipeline(tmp / "pipe")
    assert isinstance(loaded, IDBoothPipeline) and bank_labels(tmp / "pipe") == [0, 1]
    assert torch.equal(getattr(loaded.bank, k.replace(".", "__")), w)
    (tmp / "blobs" / refs[biggest].sha256).unlink()  # a pruned store: the flow trains again instead of writing less
    assert missing_blobs(refs, tmp / "blobs") == [biggest]
    # a rerun over the same checkpoints trains nothing again and gives the same bank
    again, st = train_generator(shards, {}, {}, 8, enc, GP, tmp / "ckpt", log=lambda s: None)
    assert st["lora_history"] == [] and st["pretrain"]["vae"]["resumed_from"] == 2
    assert torch.equal(getattr(again.bank, k.replace(".", "__")), w)


def load_file_bytes(data: bytes) -> list[str]:
    from safetensors.torch import load
    return list(load(data))


def test_plan_renders_prompts_per_identity_aligned_and_subset_identical(trained):
    pipe = trained[0]
    real = {**real_stats(), "personalised": np.array([3, 1])}  # real labels in bank order
    plan = plan_identities(real, SI, POOL, "idbooth")
    rows = plan["rows"]
    assert len(rows) == 2 * 3 and [r["real_label"] for r in rows] == [3, 3, 3, 1, 1, 1] and [r["lora"] for r in rows[::3]] == [0, 1]
    assert all(r["prompt"].startswith(INSTANCE_PROMPT) for r in rows) and len({r["prompt"] for r in rows}) > 1
    assert plan["embeddings"].shape == (2, 1, 16)
    det = MTCNNDetector()
    aligner = lambda ims: align_generated(ims, det, 0.9)  # noqa: E731
    full = render_block(pipe, None, plan, [0, 1], SI, aligner=aligner)
    part = render_block(pipe, None, plan, [1], SI, aligner=aligner)
    assert [s["key"] for s in part] == [s["key"] for s in full[3:]]
    assert [s["png"] for s in part] == [s["png"] for s in full[3:]]  # per-image seeds and fixed batch shapes
    assert all(isinstance(s["aligned"], bool) for s in full)
    assert {Image.open(io.BytesIO(s["png"])).size for s in full} == {(112, 112)}  # the aligner's template size
    # another identity's LoRA renders other images from the same seeds and prompts
    swapped = render_block(pipe, None, {**plan, "rows": [{**r, "lora": 1 - r["lora"]} for r in rows]}, [0], SI)
    plain = render_block(pipe, None, plan, [0], SI)
    assert [s["png"] for s in swapped] != [s["png"] for s in plain]


def test_missing_base_model_folder_is_a_clear_error(tmp_path, lfw_files):
    shards, _ = lfw_face_shards(tmp_path, lfw_files)
    enc = IResNet((1, 1), (8, 16), 16, 16).eval()
    with pytest.raises(FileNotFoundError, match="not a Stable Diffusion diffusers folder"):
        train_generator(shards, {}, {}, 8, enc, {**GP, "idbooth": {**IP, "base_model": str(tmp_path / "nowhere")}}, tmp_path / "ck")
