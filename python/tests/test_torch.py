"""`adanoise.torch` in a plain PyTorch loop on synthetic data: noise lands in the
epochs the decisions name, with their sigma (measured from the parameters), and
a state_dict round trip mid-run continues exactly like an uninterrupted run."""

import copy
import json

import pytest
import torch
import torch.nn.functional as F

from adanoise import AdanoiseError, CosineRestarts
from adanoise.torch import AdaptiveNoise, CosineRestartsLR

from helpers import FIRING, data, flat, model

EPOCHS = 7
LR = 0.1


def clean_grads(net):
    return torch.cat([p.grad.detach().reshape(-1).clone() for p in net.parameters()])


def train(noise_kind, epochs=EPOCHS, start=None, stop=None, weight_noise_scale="absolute"):
    """Plain SGD (no momentum, no weight decay), so each step's update is -LR times the
    gradient it was given: the noise is what is left after removing the clean gradient."""
    batches = data()
    if start is None:
        net = model()
        opt = torch.optim.SGD(net.parameters(), lr=LR)
        noise = AdaptiveNoise(
            net.parameters(), epochs=epochs, noise=noise_kind, seed=3,
            weight_noise_scale=weight_noise_scale, **FIRING,
        )
        first = 1
    else:
        net, opt, noise, first = start
    record = []
    for epoch in range(first, (stop or epochs) + 1):
        before = flat(net)
        rms = [p.detach().square().mean().sqrt().item() for p in net.parameters()]
        noise.start_epoch()
        weight_noise = flat(net) - before
        grad_noise = []
        losses = []
        for x, y in batches:
            opt.zero_grad()
            loss = F.cross_entropy(net(x), y)
            loss.backward()
            clean = clean_grads(net)
            noise.after_backward()
            w0 = flat(net)
            opt.step()
            grad_noise.append(-(flat(net) - w0) / LR - clean)
            losses.append(loss.item())
        with torch.no_grad():
            val = sum(F.cross_entropy(net(x), y).item() for x, y in batches) / len(batches)
        decision = noise.end_epoch(train_loss=sum(losses) / len(losses), val_loss=val)
        record.append((epoch, weight_noise, torch.cat(grad_noise), decision, rms))
    return record, (net, opt, noise)


@pytest.mark.parametrize("kind", ["gaussian", "uniform"])
def test_noise_lands_in_the_decided_epochs_with_its_sigma(kind):
    record, _ = train(kind)
    grad_sigma = weight_sigma = 0.0
    noisy_grad = noisy_weight = quiet = 0
    for epoch, weight_noise, grad_noise, decision, _ in record:
        for applied, sigma in ((grad_noise, grad_sigma), (weight_noise, weight_sigma)):
            if sigma == 0:
                assert applied.abs().max() < 1e-4, (epoch, applied.abs().max())
            else:
                assert abs(applied.std().item() / sigma - 1) < 0.05, (epoch, applied.std(), sigma)
                assert abs(applied.mean().item()) < 0.1 * sigma
                if kind == "uniform":
                    assert applied.abs().max() <= 3**0.5 * sigma * 1.01
        noisy_grad += grad_sigma > 0
        noisy_weight += weight_sigma > 0
        quiet += grad_sigma == 0 and weight_sigma == 0 and epoch > 2
        grad_sigma, weight_sigma = decision.grad_sigma, decision.weight_sigma
    assert noisy_grad >= 2 and noisy_weight >= 2, "the thresholds should make noise fire"
    assert quiet >= 1, "a cooldown epoch should carry no noise"
    cooldowns = [r[3].cooldown for r in record]
    assert 1 in cooldowns, cooldowns


def test_noise_none_decides_but_never_injects():
    record, _ = train("none")
    assert any(r[3].grad_sigma > 0 for r in record)
    for _, weight_noise, grad_noise, *_ in record:
        assert weight_noise.abs().max() == 0
        assert grad_noise.abs().max() < 1e-4


def test_relative_weight_noise_follows_each_tensors_scale_and_none_adds_none():
    record, _ = train("gaussian", weight_noise_scale="relative")
    sizes = [p.numel() for p in model().parameters()]
    weight_sigma, checked = 0.0, 0
    for epoch, weight_noise, _, decision, rms in record:
        if weight_sigma > 0:
            for part, size, r in zip(weight_noise.split(sizes), sizes, rms):
                if size >= 640:
                    assert abs(part.std().item() / (weight_sigma * r) - 1) < 0.1, (epoch, size)
                    checked += 1
        weight_sigma = decision.weight_sigma
    assert checked >= 2, "weight noise should fire"
    record, _ = train("gaussian", weight_noise_scale="none")
    assert any(d.weight_sigma > 0 for *_, d, _ in record), "decided, as before"
    assert all(w.abs().max() == 0 for _, w, *_ in record), "never applied"
    assert any(g.abs().max() > 1e-3 for _, _, g, *_ in record), "gradient noise stays"


def test_a_state_dict_round_trip_mid_run_continues_identically():
    whole, (net_whole, *_) = train("gaussian")
    first, (net, opt, noise) = train("gaussian", stop=3)
    saved = (
        copy.deepcopy(net.state_dict()),
        copy.deepcopy(opt.state_dict()),
        json.loads(json.dumps(noise.state_dict())),
    )
    net2 = model(seed=99)
    net2.load_state_dict(saved[0])
    opt2 = torch.optim.SGD(net2.parameters(), lr=LR)
    opt2.load_state_dict(saved[1])
    noise2 = AdaptiveNoise(
        net2.parameters(), epochs=EPOCHS, noise="gaussian", seed=3, weight_noise_scale="absolute", **FIRING
    )
    noise2.load_state_dict(saved[2])
    rest, (net_resumed, *_) = train("gaussian", start=(net2, opt2, noise2, 4))
    got = [r[3].to_dict() for r in first + rest]
    assert got == [r[3].to_dict() for r in whole]
    assert torch.equal(flat(net_resumed), flat(net_whole))


def test_misuse_is_explained_and_leaves_the_object_usable():
    net = model()
    noise = AdaptiveNoise(net.parameters(), epochs=3)
    with pytest.raises(AdanoiseError, match="outside an epoch"):
        noise.before_step()
    noise.start_epoch()
    with pytest.raises(AdanoiseError, match="found no gradient"):
        noise.before_step()
    with pytest.raises(AdanoiseError, match="had no optimiser step"):
        noise.end_epoch(train_loss=1.0, val_loss=1.0)
    # The epoch stays open: its steps can still come, and it ends normally.
    x, y = data()[0]
    F.cross_entropy(net(x), y).backward()
    assert noise.before_step()
    assert noise.end_epoch(train_loss=1.0, val_loss=1.0).epoch == 1
    with pytest.raises(AdanoiseError, match="noise must be one of"):
        AdaptiveNoise(net.parameters(), epochs=3, noise="laplace")
    with pytest.raises(AdanoiseError, match="not the model"):
        AdaptiveNoise(net, epochs=3)
    with pytest.raises(AdanoiseError, match="parameter group must be a dict"):
        AdaptiveNoise([{"weights": list(net.parameters())}], epochs=3)
    with pytest.raises(AdanoiseError, match="seed must be"):
        AdaptiveNoise(net.parameters(), epochs=3, seed=-1)
    with pytest.raises(AdanoiseError, match="policy must be one of"):
        AdaptiveNoise(net.parameters(), epochs=3, policy="cyclic")
    with pytest.raises(AdanoiseError, match="GradScaler"):
        AdaptiveNoise(net.parameters(), epochs=3, scaler=object())


def test_the_lr_scheduler_follows_the_schedule_and_resumes():
    net = model()
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    shape = dict(epochs=4, steps_per_epoch=5, restart_epochs=2)
    sched = CosineRestartsLR(opt, **shape)
    reference = CosineRestarts(0.05, **shape)
    seen = []
    for step in range(12):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == [reference.lr_at(t) for t in range(12)]
    state = sched.state_dict()
    opt2 = torch.optim.SGD(model().parameters(), lr=0.05)
    sched2 = CosineRestartsLR(opt2, **shape)
    sched2.load_state_dict(state)
    opt2.param_groups[0]["lr"] = sched2.get_last_lr()[0]
    assert opt2.param_groups[0]["lr"] == reference.lr_at(12)


def test_the_lr_scheduler_resumes_into_a_longer_schedule():
    shape = dict(steps_per_epoch=3, restart_epochs=1)
    opt = torch.optim.SGD(model().parameters(), lr=0.05)
    short = CosineRestartsLR(opt, epochs=2, **shape)
    for _ in range(6):
        opt.step()
        short.step()
    opt2 = torch.optim.SGD(model().parameters(), lr=0.05)
    longer = CosineRestartsLR(opt2, epochs=4, **shape)
    longer.load_state_dict(short.state_dict())
    reference = CosineRestarts(0.05, epochs=4, **shape)
    for t in range(6, 12):
        opt2.step()
        longer.step()
        assert opt2.param_groups[0]["lr"] == reference.lr_at(min(t + 1, 11))
