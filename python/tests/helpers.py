"""A small model and data shared by the adapter's tests, and thresholds that make
the scheduler fire from epoch 2 on."""

import torch

# Checks from epoch 2 on, with thresholds every epoch exceeds: noise fires, and after two
# noisy decisions in a row a one-epoch cooldown follows.
FIRING = dict(
    min_epochs_before_flag=1,
    flag_window=1,
    overfit_epochs=1,
    grad_plateau=0.9,
    low_weight_update=0.5,
    val_plateau_delta=0.9,
    consecutive_trigger=2,
    cooldown_min=1,
    cooldown_max=1,
    sigma_min=0.02,
    sigma_max=0.05,
)


def data(seed=0, n=256, batch=64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 32, generator=g)
    y = (x[:, :10].argmax(1)).long()
    return [(x[i : i + batch], y[i : i + batch]) for i in range(0, n, batch)]


def model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))


def flat(net):
    return torch.cat([p.detach().reshape(-1).clone() for p in net.parameters()])
