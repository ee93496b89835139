"""`AdaptiveNoise.state_dict()` and `load_state_dict()`: usable in the middle of an epoch,
complete, validated on load (nothing NaN, no panic), atomic, and never replacing the
constructor's settings; and the baseline policies (constant, annealed) in Python."""

import io
import json
import math

import pytest
import torch
import torch.nn.functional as F

from adanoise import AdanoiseError, Decision
from adanoise.torch import AdaptiveNoise

from helpers import FIRING, data, flat, model

EPOCHS = 6
LR = 0.1


def make(seed=4, **options):
    net = model()
    opt = torch.optim.SGD(net.parameters(), lr=LR, momentum=0.9)
    noise = AdaptiveNoise(net.parameters(), EPOCHS, "gaussian", seed=seed, **{**FIRING, **options})
    return net, opt, noise


def train(net, opt, noise, first_step, last_step):
    """Global optimiser steps [first_step, last_step) of the run, epochs opened and closed
    where they fall; returns the decisions taken."""
    batches = data()
    decisions = []
    for step in range(first_step, last_step):
        index = step % len(batches)
        if index == 0:
            noise.start_epoch()
        x, y = batches[index]
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        noise.before_step()
        opt.step()
        if index == len(batches) - 1:
            decisions.append(noise.end_epoch(train_loss=2.0 / (step + 1), val_loss=1.0))
    return decisions


def snapshot(net, opt, noise):
    buffer = io.BytesIO()
    torch.save({"net": net.state_dict(), "opt": opt.state_dict(), "noise": noise.state_dict()}, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


def test_a_mid_epoch_round_trip_continues_identically():
    total = EPOCHS * len(data())
    whole = make()
    uninterrupted = train(*whole, 0, total)
    first = make()
    middle = 2 * len(data()) + 2  # in the middle of epoch 3
    before = train(*first, 0, middle)
    saved = snapshot(*first)
    net, opt, noise = make()
    net.load_state_dict(saved["net"])
    opt.load_state_dict(saved["opt"])
    noise.load_state_dict(saved["noise"])
    after = train(net, opt, noise, middle, total)
    assert [d.to_dict() for d in before + after] == [d.to_dict() for d in uninterrupted]
    assert any(d.grad_sigma > 0 for d in uninterrupted)
    assert torch.equal(flat(net), flat(whole[0]))


def test_an_epoch_end_state_is_plain_values_and_keeps_the_last_decision():
    net, opt, noise = make()
    train(net, opt, noise, 0, 2 * len(data()))
    state = json.loads(json.dumps(noise.state_dict()))
    fresh = make()[2]
    fresh.load_state_dict(state)
    assert fresh.last_decision.to_dict() == noise.last_decision.to_dict()
    assert (fresh.epoch, fresh.step, fresh.grad_sigma) == (noise.epoch, noise.step, noise.grad_sigma)


def loaded_or_refused(state, match):
    """Loads `state` into a fresh AdaptiveNoise, expecting a refusal naming `match`, and
    checks that the refusal changed nothing."""
    net, opt, noise = make()
    train(net, opt, noise, 0, len(data()))
    before = json.dumps(noise.state_dict(), sort_keys=True)
    with pytest.raises(AdanoiseError, match=match):
        noise.load_state_dict(state)
    assert json.dumps(noise.state_dict(), sort_keys=True) == before, "a refused load changed the object"


def saved_state():
    net, opt, noise = make()
    train(net, opt, noise, 0, 3 * len(data()))
    return json.loads(json.dumps(noise.state_dict()))


def test_a_state_of_other_settings_is_refused_naming_them():
    other = make(seed=5)[2]
    with pytest.raises(AdanoiseError, match="seed: 4 there, 5 here"):
        other.load_state_dict(saved_state())
    net = model()
    uniform = AdaptiveNoise(net.parameters(), EPOCHS, "uniform", seed=4, **FIRING)
    with pytest.raises(AdanoiseError, match="noise: 'gaussian' there, 'uniform' here"):
        uniform.load_state_dict(saved_state())
    longer = AdaptiveNoise(net.parameters(), EPOCHS + 1, "gaussian", seed=4, **FIRING)
    with pytest.raises(AdanoiseError, match="epochs"):
        longer.load_state_dict(saved_state())


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("grad_sigma", math.nan, "grad_sigma must be a finite number"),
        ("weight_sigma", -0.1, "weight_sigma must be a finite number"),
        ("step", -1, "step must be a whole number"),
        ("epoch", 7, "does not follow its scheduler"),
        ("version", 1, "not an AdaptiveNoise.state_dict"),
    ],
)
def test_a_damaged_state_is_refused_and_changes_nothing(field, value, match):
    state = saved_state()
    state[field] = value
    loaded_or_refused(state, match)


def test_a_damaged_scheduler_state_is_refused_not_a_panic():
    state = saved_state()
    scheduler = state["scheduler"]
    # A history cut short: the scheduler's own state no longer adds up.
    for key, value in scheduler.items():
        if isinstance(value, list) and value:
            scheduler[key] = value[:-1]
    loaded_or_refused(state, "")
    state = saved_state()
    state["last_decision"]["grad_sigma"] = -1.0
    loaded_or_refused(state, "sigmas must be finite")
    missing = saved_state()
    del missing["in_epoch"]
    loaded_or_refused(missing, "not an AdaptiveNoise.state_dict")


def test_a_decision_round_trips_through_a_dict():
    net, opt, noise = make()
    train(net, opt, noise, 0, 2 * len(data()))
    d = noise.last_decision
    assert Decision.from_dict(d.to_dict()).to_dict() == d.to_dict()
    with pytest.raises(AdanoiseError, match="not a decision"):
        Decision.from_dict({"epoch": "two"})


def sgd_noise(policy, epochs=3, **options):
    """The gradient noise of each step under `policy` (plain SGD: what the update holds
    beyond the clean gradient) and the weight noise of each epoch's start."""
    net = model()
    opt = torch.optim.SGD(net.parameters(), lr=LR)
    noise = AdaptiveNoise(net.parameters(), epochs, "gaussian", seed=0, policy=policy, **options)
    grads, weights = [], []
    for _ in range(epochs):
        w = flat(net)
        noise.start_epoch()
        weights.append(flat(net) - w)
        for x, y in data(n=1024, batch=256):
            opt.zero_grad()
            F.cross_entropy(net(x), y).backward()
            clean = torch.cat([p.grad.reshape(-1).clone() for p in net.parameters()])
            noise.before_step()
            w = flat(net)
            opt.step()
            grads.append(-(flat(net) - w) / LR - clean)
        noise.end_epoch(train_loss=1.0, val_loss=1.0)
    return grads, weights


def test_the_constant_policy_adds_its_sigma_at_every_step_and_no_weight_noise():
    grads, weights = sgd_noise("constant", noise_sigma=0.02)
    for g in grads:
        assert g.std().item() == pytest.approx(0.02, rel=0.05)
    assert all(w.abs().max() == 0 for w in weights)


def test_the_annealed_policy_follows_its_formula_per_step():
    eta, gamma = 0.01, 0.55
    grads, weights = sgd_noise("annealed", anneal_eta=eta, anneal_gamma=gamma)
    for t, g in enumerate(grads):
        assert g.std().item() == pytest.approx(math.sqrt(eta / (1 + t) ** gamma), rel=0.05), t
    assert all(w.abs().max() == 0 for w in weights)


def test_a_policy_that_injects_nothing_is_refused():
    with pytest.raises(AdanoiseError, match="inject"):
        AdaptiveNoise(model().parameters(), 3, "none", policy="constant")
    with pytest.raises(AdanoiseError):
        AdaptiveNoise(model().parameters(), 3, "gaussian", policy="constant", noise_sigma=math.nan)
