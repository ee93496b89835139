"""`AdaptiveNoise.state_dict()` and `load_state_dict()`: usable in the middle of an epoch,
complete, validated on load (nothing NaN, no panic), atomic, and never replacing the
constructor's settings; and the baseline policies (constant, annealed) in Python."""

import copy
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


# -- running state: what a save, a refusal, a retry or a second copy does to it ------------


def observed_run(save_at=(), epochs=3, net_opt_noise=None):
    """`epochs` epochs of the shared loop, calling `state_dict()` after the global optimiser
    steps in `save_at`; returns each epoch's observed gradient norm, weight update and
    decision, and the final weights."""
    net, opt, noise = net_opt_noise or make()
    batches = data()
    seen = []
    step = 0
    for epoch in range(epochs):
        noise.start_epoch()
        for x, y in batches:
            opt.zero_grad()
            F.cross_entropy(net(x), y).backward()
            noise.before_step()
            opt.step()
            if step in save_at:
                noise.state_dict()
            step += 1
        decision = noise.end_epoch(train_loss=2.0 / (epoch + 1), val_loss=1.0)
        seen.append((noise.last_grad_norm, noise.last_weight_update, decision.to_dict()))
    return seen, flat(net)


def test_a_mid_epoch_state_dict_changes_nothing_in_the_live_object():
    plain, weights = observed_run()
    steps = len(data())
    for save_at in ([steps + 1], list(range(3 * steps))):
        saved, saved_weights = observed_run(save_at=save_at)
        assert saved == plain, f"state_dict() after steps {save_at} changed what the run observed"
        assert torch.equal(saved_weights, weights)
    assert any(d["grad_sigma"] > 0 for *_, d in plain), "the thresholds should make noise fire"


def test_a_mid_epoch_state_dict_holds_the_running_sums_and_is_repeatable():
    net, opt, noise = make()
    train(net, opt, noise, 0, len(data()) + 3)
    first, second = noise.state_dict(), noise.state_dict()
    assert first["in_epoch"]["norms"] == second["in_epoch"]["norms"]
    assert len(first["in_epoch"]["norms"]) == 3 and all(n > 0 for n in first["in_epoch"]["norms"])


def test_end_epoch_refusing_a_nan_loss_changes_nothing_and_a_retry_observes_the_true_norm():
    steps = len(data())

    def to_the_epoch_end():
        net, opt, noise = make()
        train(net, opt, noise, 0, 2 * steps - 1)  # epoch 2 open, every step taken
        return net, opt, noise

    net, opt, noise = to_the_epoch_end()
    before = comparable(noise.state_dict())
    for bad in (dict(train_loss=math.nan, val_loss=1.0), dict(train_loss=1.0, val_loss=-1.0)):
        with pytest.raises(AdanoiseError):
            noise.end_epoch(**bad)
        assert comparable(noise.state_dict()) == before, "a refused end_epoch() changed the object"
    retried = noise.end_epoch(train_loss=1.0, val_loss=1.0)
    ref_net, ref_opt, reference = to_the_epoch_end()
    expected = reference.end_epoch(train_loss=1.0, val_loss=1.0)
    assert noise.last_grad_norm == reference.last_grad_norm > 0
    assert noise.last_weight_update == reference.last_weight_update
    assert retried.to_dict() == expected.to_dict()
    (seen, weights), (expected_seen, expected_weights) = (
        observed_run(net_opt_noise=(net, opt, noise)),
        observed_run(net_opt_noise=(ref_net, ref_opt, reference)),
    )
    assert seen == expected_seen and torch.equal(weights, expected_weights)


def comparable(state):
    """A state with its tensors as lists, for comparing two states."""
    if isinstance(state, torch.Tensor):
        return (str(state.dtype), state.tolist())
    if isinstance(state, dict):
        return {k: comparable(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return [comparable(v) for v in state]
    return state


def at_the_middle_of_epoch_2():
    net, opt, noise = make()
    train(net, opt, noise, 0, len(data()) + 2)
    return net, opt, noise


def damage_in_epoch(key, value):
    def damage(state):
        state["in_epoch"][key] = value(state["in_epoch"]) if callable(value) else value
    return damage


def deleted_in_epoch(key):
    def damage(state):
        del state["in_epoch"][key]
    return damage


def set_field(key, value):
    def damage(state):
        state[key] = value(state) if callable(value) else value
    return damage


def nan_start(state):
    state["in_epoch"]["start"][0] = torch.full_like(state["in_epoch"]["start"][0], math.nan)


def other_epochs_decision(state):
    state["last_decision"] = dict(state["last_decision"], epoch=state["last_decision"]["epoch"] + 1)


DAMAGED = [
    ("a missing in-epoch field", deleted_in_epoch("steps"), "steps"),
    ("a missing epoch-start", deleted_in_epoch("start"), "start"),
    ("in_epoch not a dict", set_field("in_epoch", "yes"), "in_epoch"),
    ("a NaN norm", damage_in_epoch("norms", lambda e: [math.nan] * len(e["norms"])), "norms"),
    ("a negative norm", damage_in_epoch("norms", lambda e: [-1.0] * len(e["norms"])), "norms"),
    ("an absurd norm", damage_in_epoch("norms", lambda e: [1e300] * len(e["norms"])), "norms"),
    ("norms not counting the steps", damage_in_epoch("norms", lambda e: e["norms"][:-1]), "norms"),
    ("negative steps", damage_in_epoch("steps", -1), "steps"),
    ("steps beyond the run's", damage_in_epoch("steps", lambda e: 10**6), "steps"),
    ("more skipped steps than steps", damage_in_epoch("skipped", lambda e: e["steps"] + 1), "skipped"),
    ("a boolean step count", damage_in_epoch("steps", True), "steps"),
    ("NaN start weights", nan_start, "start"),
    ("start weights of another dtype", damage_in_epoch("start", lambda e: [t.double() for t in e["start"]]), "start"),
    ("an absurd grad_sigma", set_field("grad_sigma", 1e300), "grad_sigma"),
    ("an infinite grad_sigma", set_field("grad_sigma", math.inf), "grad_sigma"),
    ("a negative weight_sigma", set_field("weight_sigma", -0.01), "weight_sigma"),
    ("a boolean grad_sigma", set_field("grad_sigma", True), "grad_sigma"),
    ("a grad_sigma its decision did not set", set_field("grad_sigma", lambda s: s["grad_sigma"] + 0.001), "grad_sigma"),
    ("a decision of another epoch", other_epochs_decision, "decision"),
    ("no decision after observed epochs", set_field("last_decision", None), "decision"),
    ("a step too large for the run", set_field("step", 2**64), "step"),
    ("a scheduler that is not one", set_field("scheduler", 5), "scheduler"),
    ("settings that are not a dict", set_field("settings", None), "settings"),
]


# The saved state of a run in the middle of epoch 2, then what an untouched copy of it
# does next.
_MIDDLE: list = []


def resumed_at_the_middle_of_epoch_2():
    """A fresh model, optimiser and AdaptiveNoise loaded with the state of a run in the
    middle of epoch 2 (saved once, read back for each call)."""
    if not _MIDDLE:
        buffer = io.BytesIO()
        net, opt, noise = at_the_middle_of_epoch_2()
        torch.save({"net": net.state_dict(), "opt": opt.state_dict(), "noise": noise.state_dict()}, buffer)
        _MIDDLE.append(buffer.getvalue())
    saved = torch.load(io.BytesIO(_MIDDLE[0]), weights_only=False)
    net, opt, noise = make()
    net.load_state_dict(saved["net"])
    opt.load_state_dict(saved["opt"])
    noise.load_state_dict(saved["noise"])
    return net, opt, noise


def continued(parts):
    """The rest of epoch 2, ended: its decision and observations, and the weights."""
    decisions = train(*parts, len(data()) + 2, 2 * len(data()))
    noise = parts[2]
    return [d.to_dict() for d in decisions], noise.last_grad_norm, noise.last_weight_update, flat(parts[0]).tolist()


@pytest.mark.parametrize("what, damage, match", DAMAGED, ids=[d[0] for d in DAMAGED])
def test_a_damaged_mid_epoch_state_is_refused_and_the_object_goes_on_as_an_untouched_one(what, damage, match):
    parts = resumed_at_the_middle_of_epoch_2()
    state = parts[2].state_dict()
    before = comparable(state)
    damage(state)
    with pytest.raises(AdanoiseError, match=match):
        parts[2].load_state_dict(state)
    assert comparable(parts[2].state_dict()) == before, "a refused load changed the object"
    if len(_MIDDLE) == 1:
        _MIDDLE.append(continued(resumed_at_the_middle_of_epoch_2()))
    assert continued(parts) == _MIDDLE[1]


def test_loading_one_state_into_two_objects_and_twice_into_one_continues_identically():
    net, opt, noise = at_the_middle_of_epoch_2()
    saved = snapshot(net, opt, noise)
    rest = (len(data()) + 2, 3 * len(data()))

    def resumed(loads=1):
        parts = make()
        for _ in range(loads):
            # A copy for each load: torch's optimiser keeps the momentum tensors it is given.
            parts[0].load_state_dict(saved["net"])
            parts[1].load_state_dict(copy.deepcopy(saved["opt"]))
            parts[2].load_state_dict(saved["noise"])
        return parts

    first, second, twice = resumed(), resumed(), resumed(loads=2)
    runs = [(train(*parts, *rest), parts) for parts in (first, second, twice)]
    whole = [d.to_dict() for d in train(net, opt, noise, *rest)]
    for decisions, (resumed_net, _, resumed_noise) in runs:
        assert [d.to_dict() for d in decisions] == whole
        assert resumed_noise.last_grad_norm == noise.last_grad_norm
        assert torch.equal(flat(resumed_net), flat(net))


def test_a_saved_state_is_a_copy_that_editing_leaves_the_object_alone():
    net, opt, noise = at_the_middle_of_epoch_2()
    state = noise.state_dict()
    state["settings"]["seed"] = 99
    state["settings"]["params"].append([1])
    state["in_epoch"]["start"][0].add_(1.0)
    state["in_epoch"]["norms"].append(5.0)
    untouched = at_the_middle_of_epoch_2()
    assert comparable(noise.state_dict()) == comparable(untouched[2].state_dict())


def as_saved_by_version_2(state):
    """A state of one of the gradient-noise policies as version 2 saved it: no perturbation
    or label draws kept, none of the later policies' parameters, an epoch's norms summed."""
    state["version"] = 2
    assert state.pop("last_perturbation") is None
    for key in NEW_POLICY_PARAMETERS:
        del state["settings"]["policy"][key]
    in_epoch = state["in_epoch"]
    if in_epoch is not None:
        assert (in_epoch.pop("perturbed"), in_epoch.pop("lrs"), in_epoch.pop("label_draws")) == ([], None, 0)
        in_epoch["norm_sum"] = float(torch.tensor(in_epoch.pop("norms")).sum())
    return state


NEW_POLICY_PARAMETERS = (
    "anti_pgd_sigma", "perturb_threshold", "perturb_interval", "perturb_radius", "langevin_temperature",
    "label_noise", "shrink_every", "shrink_factor", "shrink_sigma",
)


def test_new_objects_read_weight_noise_as_relative_and_a_state_without_a_reading_as_absolute():
    from adanoise import NoisePolicy, defaults

    assert NoisePolicy().weight_noise_scale == "relative" == defaults()["weight_noise_scale"]
    assert make()[2].policy.weight_noise_scale == "relative"
    net, opt, absolute = make(weight_noise_scale="absolute")
    train(net, opt, absolute, 0, 2 * len(data()))
    older = as_saved_by_version_2(json.loads(json.dumps(absolute.state_dict())))
    del older["settings"]["policy"]["weight_noise_scale"]
    with pytest.raises(AdanoiseError, match="weight_noise_scale: 'absolute' there, 'relative' here"):
        make()[2].load_state_dict(older)
    resumed = make(weight_noise_scale="absolute")[2]
    resumed.load_state_dict(older)
    assert resumed.last_decision.to_dict() == absolute.last_decision.to_dict()


def test_a_copy_or_pickle_of_the_object_is_refused_pointing_to_its_state():
    noise = make()[2]
    with pytest.raises(AdanoiseError, match="load_state_dict"):
        copy.deepcopy(noise)
    with pytest.raises(AdanoiseError, match="state_dict"):
        torch.save(noise, io.BytesIO())


def test_a_mid_epoch_state_of_the_previous_version_continues_and_its_damaged_sum_is_refused():
    net, opt, noise = at_the_middle_of_epoch_2()
    state = snapshot(net, opt, noise)
    older = as_saved_by_version_2(state["noise"])
    for bad in (math.nan, -1.0, True):
        damaged = copy.deepcopy(older)
        damaged["in_epoch"]["norm_sum"] = bad
        with pytest.raises(AdanoiseError, match="norm_sum"):
            make()[2].load_state_dict(damaged)
    resumed = make()
    resumed[0].load_state_dict(state["net"])
    resumed[1].load_state_dict(state["opt"])
    resumed[2].load_state_dict(older)
    again = resumed[2].state_dict()
    assert again["version"] == 2 and again["in_epoch"]["norm_sum"] == older["in_epoch"]["norm_sum"]
    rest = (len(data()) + 2, 3 * len(data()))
    decisions = train(*resumed, *rest)
    expected = train(net, opt, noise, *rest)
    assert [d.flags for d in decisions] == [d.flags for d in expected]
    assert resumed[2].last_grad_norm == pytest.approx(noise.last_grad_norm, rel=1e-6)
    assert resumed[2].state_dict()["version"] == 4


def test_an_epoch_past_the_noise_schedule_is_refused_at_its_start():
    net = model()
    noise = AdaptiveNoise(net.parameters(), 1, "gaussian", seed=0)
    noise.start_epoch()
    x, y = data()[0]
    F.cross_entropy(net(x), y).backward()
    noise.before_step()
    noise.end_epoch(train_loss=1.0, val_loss=1.0)
    with pytest.raises(AdanoiseError, match="past the noise schedule"):
        noise.start_epoch()
    assert (noise.epoch, noise.state_dict()["in_epoch"]) == (1, None)
