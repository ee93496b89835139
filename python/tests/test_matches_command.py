"""The adapter against the `adanoise` command: the same model (baby-cnn), the same
synthetic data, the same optimiser, rate, thresholds and epochs, trained once by the
command and once by a PyTorch loop with `AdaptiveNoise`, decide alike epoch by epoch.

What is identical and what is not (docs/python.md): the decisions' flags, counters and
cooldowns, and so which epochs get which kind of noise, come from the same Rust code and
agree wherever the observations fall on the same side of the thresholds (chosen here
well away from them); a sigma depends on the observed losses, which two
implementations' float arithmetic and random streams (initialisation, augmentation,
noise) make close but not equal, so it is compared within the bounds it must keep."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from adanoise.torch import AdaptiveNoise, CosineRestartsLR

from conftest import run_adanoise

EPOCHS = 6
BATCH = 50
LR = 0.01
# Flags that every epoch raises (plateaus, low updates) or none does (overfitting), so
# the decisions do not hinge on a loss's last digits.
THRESHOLDS = dict(
    min_epochs_before_flag=1,
    flag_window=1,
    overfit_epochs=1000,
    grad_plateau=0.95,
    low_weight_update=0.9,
    val_plateau_delta=0.95,
    consecutive_trigger=2,
    cooldown_min=1,
    cooldown_max=2,
    sigma_min=0.01,
    sigma_max=0.05,
)
# Named on both sides, so that the comparison holds whatever either side's default is.
WEIGHT_NOISE_SCALE = "relative"
MEAN = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
STD = torch.tensor([0.2471, 0.2435, 0.2616]).view(1, 3, 1, 1)


def read_split(paths):
    records = np.concatenate([np.fromfile(p, dtype=np.uint8).reshape(-1, 3073) for p in paths])
    images = torch.from_numpy(records[:, 1:].copy()).view(-1, 3, 32, 32).float() / 255
    return (images - MEAN) / STD, torch.from_numpy(records[:, 0].astype(np.int64))


def augment(x, g):
    padded = F.pad(x, (4, 4, 4, 4))
    out = torch.empty_like(x)
    for i in range(len(x)):
        dx, dy = torch.randint(0, 9, (2,), generator=g).tolist()
        crop = padded[i, :, dy : dy + 32, dx : dx + 32]
        out[i] = crop.flip(-1) if torch.rand((), generator=g) < 0.5 else crop
    return out


def baby_cnn():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(8 * 16 * 16, 10),
    )


def adapter_decisions(data_dir: Path):
    root = data_dir / "cifar-10-batches-bin"
    x, y = read_split(sorted(root.glob("data_batch_*.bin")))
    vx, vy = read_split([root / "test_batch.bin"])
    net = baby_cnn()
    opt = torch.optim.SGD(net.parameters(), lr=LR, weight_decay=1e-4)  # the command's default
    steps = len(x) // BATCH + (len(x) % BATCH > 0)
    lr = CosineRestartsLR(opt, epochs=EPOCHS, steps_per_epoch=steps)
    noise = AdaptiveNoise(
        net.parameters(), EPOCHS, "gaussian", seed=0, weight_noise_scale=WEIGHT_NOISE_SCALE, **THRESHOLDS
    )
    g = torch.Generator().manual_seed(0)
    decisions = []
    for _ in range(EPOCHS):
        noise.start_epoch()
        order = torch.randperm(len(x), generator=g)
        total = 0.0
        for i in range(0, len(x), BATCH):
            idx = order[i : i + BATCH]
            opt.zero_grad()
            loss = F.cross_entropy(net(augment(x[idx], g)), y[idx])
            loss.backward()
            noise.before_step()
            opt.step()
            lr.step()
            total += loss.item() * len(idx)
        with torch.no_grad():
            val = F.cross_entropy(net(vx), vy).item()
        decisions.append(noise.end_epoch(train_loss=total / len(x), val_loss=val).to_dict())
    return decisions


def command_decisions(data_dir: Path, out: Path):
    sets = [a for k, v in THRESHOLDS.items() for a in ("--" + k.replace("_", "-"), str(v))]
    run_adanoise(
        "train", "--model", "baby-cnn", "--optimizer", "sgd", "--lr", str(LR),
        "--epochs", str(EPOCHS), "--batch-size", str(BATCH), "--noise", "gaussian",
        "--threads", "1", "--offline", "--data-dir", str(data_dir), "--out", str(out),
        "--weight-noise-scale", WEIGHT_NOISE_SCALE, *sets,
    )
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["decision"] for line in lines]


def test_the_adapter_decides_as_the_command_does(tmp_path):
    data_dir = tmp_path / "data"
    run_adanoise("data", "synthetic", "--data-dir", str(data_dir), "--train", "500", "--test", "100")
    ours = adapter_decisions(data_dir)
    theirs = command_decisions(data_dir, tmp_path / "run")
    assert len(ours) == len(theirs) == EPOCHS
    fired = 0
    for a, b in zip(ours, theirs):
        assert a["epoch"] == b["epoch"]
        assert a["flags"] == b["flags"], (a, b)
        assert a["cooldown"] == b["cooldown"], (a, b)
        for key in ("grad_sigma", "weight_sigma"):
            assert (a[key] > 0) == (b[key] > 0), (key, a, b)
            if a[key] > 0:
                fired += 1
                assert THRESHOLDS["sigma_min"] * 0.01 <= a[key] <= THRESHOLDS["sigma_max"]
                assert a[key] == pytest.approx(b[key], rel=0.25), (key, a, b)
    assert fired >= 2, "the thresholds should make noise fire"
