"""The field's policies in `adanoise.torch.AdaptiveNoise`, each against a hand
computation: anti-PGD's perturbations telescope (the weights stay within two draws of
where the gradients put them, while gradient noise accumulates), perturbed gradient
descent fires exactly at the steps its rule names with its radius, Langevin dynamics adds
`sqrt(2 lr T)` per step and parameter group, shrink and perturb acts at epochs `k + 1,
2k + 1, ...` with `w' - lambda w` of standard deviation sigma, and label noise replaces
`p (K - 1) / K` of the labels. Also: the after-step call that cannot be forgotten, mid-epoch
state round trips that continue as an uninterrupted run, and refusals that change
nothing."""

import copy
import io
import json
import math

import pytest
import torch
import torch.nn.functional as F

from adanoise import AdanoiseError, NoisePolicy, defaults
from adanoise.torch import AdaptiveNoise, CosineRestartsLR

from helpers import data, flat, model

N = 20_000  # elements of the test parameter: its std is measured to about 0.5 %


def still(*sizes, seed=0):
    """Parameters a zero loss never moves (their gradients are 0), so that what moves them
    is the policy's noise alone."""
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(n, generator=g)) for n in sizes]


def zero_loss_step(params, opt, noise, hook=True):
    """One optimiser step on a loss whose gradients are 0."""
    opt.zero_grad()
    sum((p * 0).sum() for p in params).backward()
    noise.before_step()
    opt.step()
    if not hook:
        noise.after_step()


# -- anti-PGD ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["gaussian", "uniform"])
def test_anti_pgd_telescopes_and_gradient_noise_accumulates(kind):
    sigma = 0.01
    (w,) = still(N)
    start = w.detach().clone()
    opt = torch.optim.SGD([w], lr=0.1)
    noise = AdaptiveNoise([w], 2, kind, seed=1, policy="anti-pgd", anti_pgd_sigma=sigma, optimizer=opt)
    noise.start_epoch()
    spread = {}
    for n in range(1, 41):
        zero_loss_step([w], opt, noise)
        if n in (1, 40):
            spread[n] = (w.detach() - start).std().item()
    # After n steps the weights moved by xi_n - xi_0: two independent draws, whatever n.
    for n, s in spread.items():
        assert s == pytest.approx(sigma * math.sqrt(2), rel=0.03), (n, s)
    if kind == "uniform":
        assert (w.detach() - start).abs().max() <= 2 * math.sqrt(3) * sigma * 1.0001
    noise.end_epoch(train_loss=1.0, val_loss=1.0)
    assert noise.last_applied["step_weight_sigma"] == sigma

    # Constant gradient noise through SGD: a random walk whose spread grows as sqrt(n).
    (v,) = still(N)
    begin = v.detach().clone()
    opt = torch.optim.SGD([v], lr=0.1)
    walk = AdaptiveNoise([v], 2, kind, seed=1, policy="constant", noise_sigma=sigma)
    walk.start_epoch()
    for n in range(1, 41):
        zero_loss_step([v], opt, walk)
        if n == 1:
            first = (v.detach() - begin).std().item()
    assert first == pytest.approx(0.1 * sigma, rel=0.03)
    assert (v.detach() - begin).std().item() == pytest.approx(0.1 * sigma * math.sqrt(40), rel=0.03)


def test_anti_pgd_by_explicit_call_and_through_a_skipped_step_gives_the_hooks_weights():
    def run(hook, skip_at=None):
        (w,) = still(1000)
        opt = torch.optim.SGD([w], lr=0.1)
        options = dict(optimizer=opt) if hook else {}
        noise = AdaptiveNoise([w], 2, "gaussian", seed=2, policy="anti-pgd", skip_non_finite=True, **options)
        noise.start_epoch()
        for n in range(5):
            opt.zero_grad()
            (w * (math.inf if n == skip_at else 0.0)).sum().backward()
            if noise.before_step():
                opt.step()  # a framework's scaler steps only where the gradients are finite
                if not hook:
                    assert noise.after_step() and not noise.after_step(), "acts once per step"
        return w.detach().clone(), noise

    hooked, _ = run(hook=True)
    called, _ = run(hook=False)
    assert torch.equal(hooked, called)
    skipped, noise = run(hook=True, skip_at=2)
    # The skipped step's draws went in too: the weights are where five steps put them.
    assert noise._skipped_in_epoch == 1
    assert torch.equal(skipped, hooked)


# -- perturbed gradient descent ---------------------------------------------------------


def perturbed_run(threshold, kind="uniform", radius=0.5, interval=3, epochs=2):
    """Each step's perturbation: the weights' change from after the optimiser's update to
    after `after_step()`; and each epoch's record."""
    net = model()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    noise = AdaptiveNoise(
        net.parameters(), epochs, kind, seed=3, policy="perturbed",
        perturb_threshold=threshold, perturb_interval=interval, perturb_radius=radius,
    )
    moves, records = [], []
    for _ in range(epochs):
        noise.start_epoch()
        for x, y in data():
            opt.zero_grad()
            F.cross_entropy(net(x), y).backward()
            noise.before_step()
            opt.step()
            updated = flat(net)
            noise.after_step()
            moves.append(flat(net) - updated)
        noise.end_epoch(train_loss=1.0, val_loss=1.0)
        records.append(noise.last_applied)
    return moves, records, noise


def test_perturbed_fires_every_interval_above_every_norm_with_its_radius():
    radius = 0.5
    moves, records, noise = perturbed_run(threshold=1e6, radius=radius)
    # Four steps an epoch, interval 3: steps 0, 3 in epoch 1 and 6 in epoch 2.
    assert [r["perturbed_steps"] for r in records] == [[0, 3], [6]]
    assert noise.last_perturbation == 6
    d = moves[0].numel()
    for step, move in enumerate(moves):
        if step in (0, 3, 6):
            # Uniform in the ball of radius r in d = 2762 dimensions: its norm r u^(1/d) is
            # above 0.99 r unless u < 0.99^2762, about 1e-12.
            assert 0.99 * radius <= move.norm().item() <= radius * (1 + 1e-5), (step, move.norm())
        else:
            assert move.abs().max() == 0, step
    moves, records, _ = perturbed_run(threshold=1e6, kind="gaussian", radius=radius)
    assert moves[3].std().item() == pytest.approx(radius / math.sqrt(d), rel=0.05)


def test_perturbed_never_fires_below_a_tiny_threshold():
    moves, records, noise = perturbed_run(threshold=1e-9)
    assert [r["perturbed_steps"] for r in records] == [[], []]
    assert noise.last_perturbation is None
    assert all(m.abs().max() == 0 for m in moves)


def test_the_perturbation_rule_is_cores():
    rule = NoisePolicy("perturbed", perturb_threshold=0.5, perturb_interval=3)
    norms = [0.9, 0.4, 0.5, 0.1, 0.2, 0.7, 0.3, 0.3, 0.6, 0.2]
    last, fired = None, []
    for step, norm in enumerate(norms):
        if rule.perturb_fires(step, norm, last):
            last = step
            fired.append(step)
    assert fired == [1, 4, 7]
    assert not NoisePolicy("anti-pgd").perturb_fires(0, 0.0, None)


# -- Langevin dynamics ------------------------------------------------------------------


def test_langevin_adds_sqrt_2_lr_t_per_step_and_group():
    temperature = 1e-3
    a, b = still(N, N)
    opt = torch.optim.SGD([{"params": [a], "lr": 0.1}, {"params": [b], "lr": 0.02}], lr=0.1)
    # Halves every group's rate after each step: the noise follows the rate of its step.
    lr = torch.optim.lr_scheduler.LambdaLR(opt, lambda n: 0.5**n)
    noise = AdaptiveNoise([a, b], 2, "gaussian", seed=4, policy="langevin", langevin_temperature=temperature,
                          optimizer=opt)
    noise.start_epoch()
    for n in range(3):
        before = [a.detach().clone(), b.detach().clone()]
        zero_loss_step([a, b], opt, noise)
        for p, start, base in zip((a, b), before, (0.1, 0.02)):
            expected = math.sqrt(2 * base * 0.5**n * temperature)
            assert (p.detach() - start).std().item() == pytest.approx(expected, rel=0.03), (n, base)
        lr.step()
    noise.end_epoch(train_loss=1.0, val_loss=1.0)
    # The record: the first parameter's group, at the epoch's first and last steps.
    assert noise.last_applied["step_weight_sigma"] == pytest.approx(math.sqrt(2 * 0.1 * temperature))
    assert noise.last_applied["step_weight_sigma_end"] == pytest.approx(math.sqrt(2 * 0.025 * temperature))


def test_langevin_without_an_optimizer_is_refused_pointing_to_it():
    (w,) = still(10)
    noise = AdaptiveNoise([w], 2, "gaussian", policy="langevin")
    noise.start_epoch()
    (w * 0).sum().backward()
    with pytest.raises(AdanoiseError, match=r"optimizer=opt"):
        noise.before_step()
    opt = torch.optim.SGD([w], lr=0.1)
    assert noise.before_step(opt), "the refusal left the step to be taken"
    opt.step()
    assert noise._awaiting is None, "the optimiser's hook acted"


# -- shrink and perturb -----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["gaussian", "uniform"])
def test_shrink_perturb_acts_at_epochs_k_plus_1_2k_plus_1(kind):
    factor, sigma = 0.4, 0.01
    (w,) = still(N)
    opt = torch.optim.SGD([w], lr=0.1)
    noise = AdaptiveNoise([w], 6, kind, seed=5, policy="shrink-perturb", shrink_every=2,
                          shrink_factor=factor, shrink_sigma=sigma)
    acted = []
    for epoch in range(1, 7):
        before = w.detach().clone()
        noise.start_epoch()
        after = w.detach().clone()
        if not torch.equal(after, before):
            acted.append(epoch)
            assert (after - factor * before).std().item() == pytest.approx(sigma, rel=0.03)
            assert (after - factor * before).mean().abs().item() < 0.05 * sigma
        zero_loss_step([w], opt, noise)
        noise.end_epoch(train_loss=1.0, val_loss=1.0)
        record = noise.last_applied
        if epoch in (3, 5):
            assert record == {"grad_sigma": 0.0, "weight_sigma": sigma, "weight_scale": "absolute", "shrink": factor}
        else:
            assert record == {"grad_sigma": 0.0, "weight_sigma": 0.0}
    assert acted == [3, 5]


def test_shrink_perturb_that_never_shrinks_is_refused():
    with pytest.raises(AdanoiseError, match="--shrink-every"):
        AdaptiveNoise(still(10), 50, "gaussian", policy="shrink-perturb")
    with pytest.raises(AdanoiseError, match="--shrink-every"):
        AdaptiveNoise(still(10), 3, "gaussian", policy="shrink-perturb", shrink_every=3)
    AdaptiveNoise(still(10), 4, "gaussian", policy="shrink-perturb", shrink_every=3)


# -- label noise ------------------------------------------------------------------------


def test_label_noise_replaces_p_times_k_minus_1_over_k_of_the_labels():
    p, classes = 0.3, 10
    (w,) = still(10)
    noise = AdaptiveNoise([w], 2, "uniform", seed=6, policy="label-noise", label_noise=p)
    noise.start_epoch()
    targets = torch.arange(100_000) % classes
    noisy = noise.noisy_labels(targets, classes)
    changed = (noisy != targets).float().mean().item()
    # Binomial: std sqrt(0.27 * 0.73 / 1e5) = 0.0014.
    assert changed == pytest.approx(p * (classes - 1) / classes, abs=0.006)
    counts = torch.bincount(noisy[noisy != targets], minlength=classes).float()
    assert (counts / counts.sum() - 1 / classes).abs().max() < 0.01
    assert torch.equal(targets, torch.arange(100_000) % classes), "the true labels are left alone"
    # A second batch of the same step (accumulation) gets draws of its own.
    assert not torch.equal(noise.noisy_labels(targets, classes), noisy)
    ignored = torch.full((1000,), -100)
    assert torch.equal(noise.noisy_labels(ignored, classes), ignored)
    (w * 0).sum().backward()
    noise.before_step()
    noise.end_epoch(train_loss=1.0, val_loss=1.0)
    assert noise.last_applied == {"grad_sigma": 0.0, "weight_sigma": 0.0, "label_noise": p}


def test_label_noise_misuse_is_explained():
    with pytest.raises(AdanoiseError, match="--noise uniform"):
        AdaptiveNoise(still(10), 2, "gaussian", policy="label-noise")
    (w,) = still(10)
    noise = AdaptiveNoise([w], 2, "uniform", policy="label-noise")
    with pytest.raises(AdanoiseError, match="outside an epoch"):
        noise.noisy_labels(torch.zeros(4, dtype=torch.long), 10)
    noise.start_epoch()
    (w * 0).sum().backward()
    with pytest.raises(AdanoiseError, match=r"noisy_labels\(y, classes\)"):
        noise.before_step()
    with pytest.raises(AdanoiseError, match="class indices"):
        noise.noisy_labels(torch.zeros(4, 10), 10)
    with pytest.raises(AdanoiseError, match="classes is 5"):
        noise.noisy_labels(torch.arange(10), 5)
    noise.noisy_labels(torch.arange(10), 10)
    assert noise.before_step()
    other = AdaptiveNoise(still(10), 2, "gaussian")
    other.start_epoch()
    with pytest.raises(AdanoiseError, match="train on your own labels"):
        other.noisy_labels(torch.arange(10), 10)


# -- the after-step call ----------------------------------------------------------------


def test_a_step_left_without_after_step_is_refused_and_the_object_goes_on():
    (w,) = still(100)
    opt = torch.optim.SGD([w], lr=0.1)
    noise = AdaptiveNoise([w], 2, "gaussian", policy="anti-pgd")
    noise.start_epoch()
    moved = w.detach().clone()
    zero_loss_step([w], opt, noise)  # no optimiser given, and no after_step() called
    assert torch.equal(w.detach(), moved)
    (w * 0).sum().backward()
    for call in (noise.before_step, lambda: noise.end_epoch(train_loss=1.0, val_loss=1.0), noise.state_dict):
        with pytest.raises(AdanoiseError, match=r"not followed by after_step\(\)|before_step\(\) and after_step\(\)"):
            call()
    assert noise.step == 1, "the refusals changed nothing"
    assert noise.after_step() and not torch.equal(w.detach(), moved)
    assert noise.before_step(), "the gradients of the refused call are taken now"
    opt.step()
    noise.after_step()
    assert noise.end_epoch(train_loss=1.0, val_loss=1.0).epoch == 1
    assert noise.step == 2
    # A policy that does nothing after a step needs no call, and takes one harmlessly.
    plain = AdaptiveNoise([w], 2, "gaussian")
    plain.start_epoch()
    zero_loss_step([w], opt, plain)
    assert not plain.after_step()
    plain.end_epoch(train_loss=1.0, val_loss=1.0)


# -- state ------------------------------------------------------------------------------

POLICIES = {
    "anti-pgd": dict(noise="gaussian", anti_pgd_sigma=0.01),
    "perturbed": dict(noise="uniform", perturb_threshold=1e6, perturb_interval=3, perturb_radius=0.5),
    "langevin": dict(noise="gaussian", langevin_temperature=1e-4),
    "shrink-perturb": dict(noise="gaussian", shrink_every=1, shrink_sigma=0.01),
    "label-noise": dict(noise="uniform", label_noise=0.3),
}
EPOCHS = 3


def make(policy, **changes):
    net = model()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    lr = CosineRestartsLR(opt, epochs=EPOCHS, steps_per_epoch=len(data()), restart_epochs=1)
    options = {**POLICIES[policy], **changes}
    noise = AdaptiveNoise(net.parameters(), EPOCHS, options.pop("noise"), seed=7, policy=policy,
                          optimizer=opt, **options)
    return net, opt, lr, noise


def train(parts, first_step, last_step):
    """Global steps [first_step, last_step), epochs opened and closed where they fall;
    returns each ended epoch's record."""
    net, opt, lr, noise = parts
    batches = data()
    records = []
    for step in range(first_step, last_step):
        index = step % len(batches)
        if index == 0:
            noise.start_epoch()
        x, y = batches[index]
        opt.zero_grad()
        if noise.policy.policy == "label-noise":
            y = noise.noisy_labels(y, 10)
        F.cross_entropy(net(x), y).backward()
        noise.before_step()
        opt.step()
        lr.step()
        if index == len(batches) - 1:
            noise.end_epoch(train_loss=1.0 / (step + 1), val_loss=1.0)
            records.append(noise.last_applied)
    return records


def saved(parts):
    net, opt, lr, noise = parts
    buffer = io.BytesIO()
    torch.save({"net": net.state_dict(), "opt": opt.state_dict(), "lr": lr.state_dict(),
                "noise": noise.state_dict()}, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


def resumed(policy, state):
    parts = make(policy)
    for part, key in zip(parts, ("net", "opt", "lr", "noise")):
        part.load_state_dict(state[key])
    return parts


# In the middle of epoch 2, after the perturbation of step 6 (steps 0, 3, 6 fire).
MIDDLE = len(data()) + 3


@pytest.mark.parametrize("policy", list(POLICIES))
def test_a_mid_epoch_round_trip_continues_as_an_uninterrupted_run(policy):
    total = EPOCHS * len(data())
    whole = make(policy)
    uninterrupted = train(whole, 0, total)
    first = make(policy)
    before = train(first, 0, MIDDLE)
    state = saved(first)
    if policy == "perturbed":
        assert (state["noise"]["last_perturbation"], state["noise"]["in_epoch"]["perturbed"]) == (6, [6])
    parts = resumed(policy, state)
    after = train(parts, MIDDLE, total)
    assert before + after == uninterrupted
    assert torch.equal(flat(parts[0]), flat(whole[0]))
    assert parts[3].state_dict() == whole[3].state_dict()


def test_a_state_of_other_policy_parameters_is_refused_naming_them():
    state = saved(make("anti-pgd"))["noise"]
    other = make("anti-pgd", anti_pgd_sigma=0.02)[3]
    with pytest.raises(AdanoiseError, match="policy.anti_pgd_sigma: 0.01 there, 0.02 here"):
        other.load_state_dict(state)
    with pytest.raises(AdanoiseError, match="policy.policy: 'anti-pgd' there, 'langevin' here"):
        make("langevin")[3].load_state_dict(state)


def perturbed_middle():
    parts = make("perturbed")
    train(parts, 0, MIDDLE)
    return parts


def edit(key, value):
    def change(state):
        target = state["in_epoch"] if key in ("perturbed", "lrs", "label_draws") else state
        target[key] = value
    return change


DAMAGED = [
    ("a perturbation out of the epoch", edit("perturbed", [2]), "not a step of the epoch"),
    ("perturbations closer than the interval", [edit("perturbed", [4, 6])], "apart"),
    ("perturbations not ending at the last one", edit("last_perturbation", 3), "last_perturbation"),
    ("a last perturbation past the run", [edit("last_perturbation", 99), edit("perturbed", [])], "not one of the run"),
    ("a negative label draw count", edit("label_draws", -1), "label_draws"),
    ("a NaN learning rate", edit("lrs", [math.nan, 0.1]), "lrs"),
    ("no last perturbation key", lambda s: s.pop("last_perturbation"), "lacks last_perturbation"),
    ("no perturbed key", lambda s: s["in_epoch"].pop("perturbed"), "lacks perturbed"),
]


@pytest.mark.parametrize("what, damage, match", DAMAGED, ids=[d[0] for d in DAMAGED])
def test_a_damaged_state_of_the_new_pieces_is_refused_and_changes_nothing(what, damage, match):
    parts = perturbed_middle()
    state = saved(parts)["noise"]
    for change in damage if isinstance(damage, list) else [damage]:
        change(state)
    fresh = perturbed_middle()[3]
    before = json.dumps(fresh.state_dict(), default=lambda t: t.tolist(), sort_keys=True)
    with pytest.raises(AdanoiseError, match=match):
        fresh.load_state_dict(state)
    assert json.dumps(fresh.state_dict(), default=lambda t: t.tolist(), sort_keys=True) == before


def test_a_perturbation_in_a_policy_that_never_perturbs_is_refused():
    parts = make("anti-pgd")
    train(parts, 0, MIDDLE)
    state = saved(parts)["noise"]
    state["last_perturbation"] = 1
    with pytest.raises(AdanoiseError, match="never perturbs"):
        make("anti-pgd")[3].load_state_dict(state)


def test_a_version_3_state_continues():
    from test_state import train as train_v3, make as make_v3

    net, opt, noise = make_v3()
    train_v3(net, opt, noise, 0, len(data()) + 2)
    state = copy.deepcopy(noise.state_dict())
    older = copy.deepcopy(state)
    older["version"] = 3
    assert older.pop("last_perturbation") is None
    for key in ("anti_pgd_sigma", "perturb_threshold", "perturb_interval", "perturb_radius",
                "langevin_temperature", "label_noise", "shrink_every", "shrink_factor", "shrink_sigma"):
        assert older["settings"]["policy"].pop(key) == defaults()[key]
    for key in ("perturbed", "lrs", "label_draws"):
        older["in_epoch"].pop(key)
    fresh = make_v3()[2]
    fresh.load_state_dict(older)
    assert fresh.state_dict()["in_epoch"]["norms"] == state["in_epoch"]["norms"]
    assert fresh.state_dict()["version"] == 4
