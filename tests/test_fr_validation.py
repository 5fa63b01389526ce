"""The FR recipe's validation split: whole identities held out, balanced interleaved pairs, and the
returned model is the checkpoint with the best validation accuracy (not simply the last epoch)."""
import numpy as np
import pandas as pd
import torch

from tasks.fr_train import Validator, train_fr, validation_pairs, validation_split
from tasks.shards import write_shards

from conftest import colour_faces

P = {"arch": {"layers": [1, 1], "widths": [8, 16], "input_size": 32, "embedding_dim": 16},
     "margin": {"kind": "cosface", "s": 16.0, "m": 0.2}, "epochs": 4, "batch_size": 8, "lr": 0.05, "momentum": 0.9,
     "weight_decay": 5e-4, "milestones": [3], "warmup_steps": 2,
     "augment": {"flip": True, "crop_scale": 0.9, "erase_p": 0.1, "jitter": 0.1}, "seed": 0, "num_workers": 0,
     "val_fraction": 0.25, "val_max_pairs": 200, "val_every": 1}


def test_split_holds_out_whole_identities():
    m = pd.DataFrame({"key": [f"k{i}" for i in range(80)], "label": np.repeat(np.arange(20), 4)})
    train, val = validation_split(m, 0.1, seed=3)
    assert len({int(k[1:]) // 4 for k in val}) == 2 and len(val) == 8
    assert not set(train) & set(val) and len(train) + len(val) == 80
    assert sorted(set(train.values())) == list(range(18))  # contiguous labels for the margin head
    assert validation_split(m, 0.1, seed=3) == (train, val)
    assert validation_split(m.head(12), 0.5, seed=0)[1] == {}  # 3 identities: nothing can be held out
    a, b, same = validation_pairs(np.repeat(np.arange(3), 3), 100, seed=0)
    assert same.sum() == (~same).sum() == 9 and same[0::2].all() and not same[1::2].any()


def test_returns_the_best_validated_checkpoint(tmp_path):
    samples, manifest = colour_faces(8, 6)
    shards = [tmp_path / s["shard"] for s in write_shards(samples, tmp_path, "t", 20)]
    train, val = validation_split(manifest, P["val_fraction"], P["seed"])
    torch.manual_seed(0)
    model, stats = train_fr(shards, train, val, P, log=lambda s: None)
    accs = [h["val_accuracy"] for h in stats["history"]]
    assert len(accs) == 4 and stats["val_identities"] == 2 and stats["train_identities"] == 6
    best = max(accs)
    assert stats["chosen_val_accuracy"] == best and accs[stats["chosen_epoch"] - 1] == best
    assert stats["chosen_epoch"] == max(i + 1 for i, a in enumerate(accs) if a == best)  # ties: the later epoch
    # the returned weights are that checkpoint: validating them again gives its accuracy
    assert Validator(shards, val, P["val_max_pairs"], P["seed"])(model) == best


def test_a_set_smaller_than_one_batch_trains_on_smaller_batches(tmp_path):
    """Full batches only would give such a set no step at all, and an untrained model scored as if trained."""
    samples, manifest = colour_faces(4, 5)
    shards = [tmp_path / s["shard"] for s in write_shards(samples, tmp_path, "t", 20)]
    train = {k: int(lab) for k, lab in zip(manifest["key"], manifest["label"])}
    logs = []
    model, stats = train_fr(shards, train, {}, dict(P, batch_size=64, epochs=3), log=logs.append)
    assert stats["batch_size_used"] == 20 and stats["steps"] == 3  # one batch of all 20 images per epoch
    assert all(h["loss"] > 0 for h in stats["history"])
    assert any("fewer than train_fr.batch_size 64" in s for s in logs), logs
    _, again = train_fr(shards, train, {}, dict(P, epochs=3), log=lambda s: None)
    assert again["batch_size_used"] == 8 and again["steps"] == 6  # 20 // 8 full batches per epoch, as before
