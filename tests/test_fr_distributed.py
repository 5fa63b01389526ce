"""Data-parallel FR training through the real launcher: torchrun starts two gloo processes on CPU; each epoch
every training key is read by exactly one rank, the ranks take the same number of steps and end with identical
parameters, the chosen model loads, and a run finding the finished checkpoint resumes instead of retraining."""
import numpy as np
import torch

from tasks.encoder import build, embed, load_encoder, save_encoder
from tasks.fr_dist import launch
from tasks.fr_train import _Relabel, keys_digest, loader, validation_split
from tasks.shards import write_shards

from conftest import colour_faces

P = {"arch": {"layers": [1, 1], "widths": [8, 16], "input_size": 32, "embedding_dim": 16},
     "margin": {"kind": "cosface", "s": 16.0, "m": 0.2}, "epochs": 2, "batch_size": 12, "lr": 0.05, "momentum": 0.9,
     "weight_decay": 5e-4, "milestones": [2], "warmup_steps": 2,
     "augment": {"flip": True, "crop_scale": 0.9, "erase_p": 0.1, "jitter": 0.1}, "seed": 0, "num_workers": 0,
     "val_fraction": 0.25, "val_max_pairs": 200, "val_every": 1,
     "distributed": {"nproc_per_node": 2, "nnodes": 1, "rdzv_endpoint": None}}


def test_two_gloo_processes_split_the_data_and_stay_in_sync(tmp_path):
    samples, manifest = colour_faces(8, 8)
    train, val = validation_split(manifest, P["val_fraction"], P["seed"])  # 48 training images, 16 held out
    # 8 shards of 6 training + 2 validation images (enough to split by shard: 4 per rank): any 4 give a rank
    # its 24 images, 4 steps of 6
    t, v = [s for s in samples if s["__key__"] in train], [s for s in samples if s["__key__"] in val]
    ordered = [s for i in range(8) for s in t[6 * i:6 * i + 6] + v[2 * i:2 * i + 2]]
    shards = [tmp_path / s["shard"] for s in write_shards(ordered, tmp_path, "t", 8)]
    assert len(shards) == 8
    lines = []
    state, stats = launch(shards, train, val, P, "cpu", tmp_path / "job", lines.append, tmp_path / "ckpt")
    log = "\n".join(lines)

    d = stats["distributed"]
    assert d["world_size"] == 2 and d["split"] == "shards", log
    assert d["steps_per_rank"] == [8, 8] and stats["steps"] == 8  # 2 epochs x 48 // 12
    assert len(set(d["param_digest_per_rank"])) == 1, d  # DDP kept the replicas identical
    assert [h["epoch"] for h in stats["history"]] == [1, 2]
    for h in stats["history"]:  # each key read once per epoch, by one rank: counts and multiset digest add up
        assert h["keys_per_rank"] == [24, 24] and h["keys_digest"] == f"{keys_digest(train):016x}", h
        assert h["steps_per_rank"][0] == h["steps_per_rank"][1] and "val_accuracy" in h
    assert "epoch 2/2" in log and "resumed" not in log

    # the chosen weights load into the project's encoder format and embed
    config = {"kind": "iresnet", "arch": P["arch"]}
    model = build(config)
    model.load_state_dict(state)
    save_encoder(model, config, tmp_path / "enc")
    assert embed(load_encoder(tmp_path / "enc"), np.zeros((2, 32, 32, 3), np.uint8)).shape == (2, 16)

    # run again: every rank takes rank 0's finished checkpoint and nothing is trained twice
    lines.clear()
    again, stats2 = launch(shards, train, val, P, "cpu", tmp_path / "job2", lines.append, tmp_path / "ckpt")
    log = "\n".join(lines)
    assert "resumed from epoch 2" in log and "epoch 1/2" not in log, log
    assert sorted(again) == sorted(state) and all(torch.equal(again[k], state[k]) for k in state)
    stats.pop("images_per_s"), stats2.pop("images_per_s")
    assert stats2 == stats


def test_too_few_shards_split_by_sample(tmp_path):
    """One shard for two ranks: each rank reads it and keeps every other sample; together they read each once."""
    samples, manifest = colour_faces(4, 5)
    shards = [tmp_path / s["shard"] for s in write_shards(samples, tmp_path, "t", 100)]
    labels = _Relabel(dict(zip(manifest["key"], manifest["label"])))
    for epoch in range(2):
        keys = [[k for _, _, ks in loader(shards, 2, 0, epoch, 0, labels, split_samples=(r, 2)) for k in ks] for r in range(2)]
        assert len(keys[0]) == len(keys[1]) == 10 and sorted(keys[0] + keys[1]) == sorted(manifest["key"])
