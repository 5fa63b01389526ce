"""ID-Booth parts on a tiny randomly initialised Stable Diffusion built from configs (no weights downloaded):
the local tokenizer, the diffusers folder round trip, LoRA as the only trainable part, and the loss terms."""
import pytest
import torch
from diffusers import StableDiffusionPipeline
from torch.nn import functional as F

from models.idbooth import CLASS_PROMPT, INSTANCE_PROMPT, add_lora, idbooth_loss, tiny_ldm, tiny_tokenizer
from models.iresnet import IResNet


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
