"""`adanoise.torch` in the training setups real PyTorch code uses: f16 mixed precision
with a GradScaler (an overflowing step included), bf16 autocast, gradient accumulation,
parameter groups (a frozen one, one with a tiny rate), `zero_grad(set_to_none=False)`,
float32-only devices, and the learning-rate schedule's end."""

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from adanoise import AdanoiseError, CosineRestarts
from adanoise.torch import AdaptiveNoise, CosineRestartsLR

from helpers import FIRING, data, flat, model

EPOCHS = 5
LR = 0.1


def loop(net, opt, noise, batches, epochs=EPOCHS, step=None):
    """A plain loop; `step(x, y)` does one optimiser step's work and returns its loss."""
    decisions = []
    for _ in range(epochs):
        noise.start_epoch()
        losses = [step(x, y) for x, y in batches]
        with torch.no_grad():
            val = sum(F.cross_entropy(net(x), y).item() for x, y in batches) / len(batches)
        decisions.append(noise.end_epoch(train_loss=sum(losses) / len(losses), val_loss=val))
    return decisions


def overflowing(index, at=5):
    """The loss of step `index`, made infinite at step `at` (as an f16 overflow would)."""
    return float("inf") if index == at else 1.0


def test_a_grad_scaler_step_is_measured_unscaled_and_an_overflow_is_skipped():
    batches = data()

    def run(scaled):
        net = model()
        opt = torch.optim.SGD(net.parameters(), lr=LR, momentum=0.9)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16) if scaled else None
        noise = AdaptiveNoise(
            net.parameters(), EPOCHS, "gaussian", seed=1, scaler=scaler,
            skip_non_finite=not scaled, **FIRING,
        )
        count = [0]
        applied = []

        def step(x, y):
            opt.zero_grad()
            loss = F.cross_entropy(net(x), y)
            boost = overflowing(count[0])
            count[0] += 1
            if scaled:
                scaler.scale(loss * boost).backward()
                applied.append(noise.before_step(opt))
                scaler.step(opt)
                scaler.update()
            else:
                (loss * boost).backward()
                ok = noise.before_step()
                applied.append(ok)
                if ok:
                    opt.step()
            return loss.item()

        decisions = loop(net, opt, noise, batches, step=step)
        return net, noise, decisions, applied

    net_s, noise_s, scaled, applied = run(scaled=True)
    net_r, noise_r, reference, _ = run(scaled=False)
    assert applied.count(False) == 1 and applied[5] is False
    # Scaling by a power of two is exact: the scaled run measures, decides and injects as
    # the unscaled one does, to the bit.
    assert [d.to_dict() for d in scaled] == [d.to_dict() for d in reference]
    assert any(d.grad_sigma > 0 for d in scaled), "the thresholds should make noise fire"
    assert torch.equal(flat(net_s), flat(net_r))
    # The skipped step still counts as a step (the schedule moved on), not in the norm.
    assert noise_s.step == EPOCHS * len(batches)
    assert noise_s.last_grad_norm < 100


def test_a_grad_scaler_needs_the_optimizer_to_unscale():
    net = model()
    scaler = torch.amp.GradScaler("cpu")
    noise = AdaptiveNoise(net.parameters(), 3, scaler=scaler)
    noise.start_epoch()
    x, y = data()[0]
    scaler.scale(F.cross_entropy(net(x), y)).backward()
    with pytest.raises(AdanoiseError, match="pass the optimizer"):
        noise.before_step()


def test_bf16_autocast_trains_without_a_scaler():
    batches = data()
    net = model()
    opt = torch.optim.SGD(net.parameters(), lr=LR)
    noise = AdaptiveNoise(net.parameters(), EPOCHS, "gaussian", seed=0, **FIRING)

    def step(x, y):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.cross_entropy(net(x), y)
        loss.backward()
        assert noise.before_step()
        opt.step()
        return loss.item()

    decisions = loop(net, opt, noise, batches, step=step)
    assert any(d.grad_sigma > 0 for d in decisions)
    assert all(p.dtype == torch.float32 for p in net.parameters())
    assert noise.last_applied["grad_sigma"] >= 0


def test_gradient_accumulation_is_one_step_per_optimizer_step():
    """K = 4 micro-batches per step against the same batches taken whole: one norm and one
    noise draw per optimiser step, so both runs measure, decide and move alike."""
    batches = data(n=512, batch=64)

    def run(micro):
        net = model()
        opt = torch.optim.SGD(net.parameters(), lr=LR)
        noise = AdaptiveNoise(net.parameters(), EPOCHS, "gaussian", seed=2, **FIRING)

        def step(x, y):
            opt.zero_grad()
            total = 0.0
            for xs, ys in zip(x.chunk(micro), y.chunk(micro)):
                loss = F.cross_entropy(net(xs), ys) / micro
                loss.backward()
                total += loss.item()
            noise.before_step()
            opt.step()
            return total

        return net, noise, loop(net, opt, noise, batches, step=step)

    net_k, noise_k, accumulated = run(4)
    net_1, noise_1, whole = run(1)
    assert noise_k.step == noise_1.step == EPOCHS * len(batches)
    for a, b in zip(accumulated, whole):
        assert a.flags == b.flags and a.cooldown == b.cooldown
        assert a.grad_sigma == pytest.approx(b.grad_sigma, rel=1e-4)
        assert a.weight_sigma == pytest.approx(b.weight_sigma, rel=1e-4)
    assert any(d.grad_sigma > 0 for d in whole)
    assert noise_k.last_grad_norm == pytest.approx(noise_1.last_grad_norm, rel=1e-4)
    assert torch.allclose(flat(net_k), flat(net_1), atol=1e-4)


def test_parameter_groups_a_frozen_group_and_a_tiny_rate():
    net = model()
    head, body = list(net[2].parameters()), list(net[0].parameters())
    frozen = torch.nn.Linear(4, 4)
    opt = torch.optim.SGD(
        [
            {"params": body, "lr": 0.1},
            {"params": head, "lr": 1e-6},
            {"params": frozen.parameters(), "lr": 0.0},
        ]
    )
    shape = dict(epochs=3, steps_per_epoch=4, restart_epochs=1)
    lr = CosineRestartsLR(opt, **shape)
    noise = AdaptiveNoise(opt.param_groups, 3, "gaussian", seed=0, **FIRING)
    assert len(noise.params) == 4 + 2, "every group's parameters"
    reference = CosineRestarts(0.1, **shape)
    for t in range(12):
        rates = [g["lr"] for g in opt.param_groups]
        assert rates[0] == pytest.approx(reference.lr_at(t), rel=1e-12)
        assert rates[1] == pytest.approx(reference.lr_at(t) * 1e-5, rel=1e-9)
        assert rates[2] == 0.0
        opt.step()
        lr.step()
    with pytest.raises(AdanoiseError, match="one per group"):
        CosineRestartsLR(opt, **shape, lr_min=[1e-6, 1e-7])


def test_the_lr_schedule_refuses_steps_past_its_end():
    net = model()
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    lr = CosineRestartsLR(opt, epochs=2, steps_per_epoch=3, restart_epochs=1)
    for _ in range(6):
        opt.step()
        lr.step()
    opt.step()
    with pytest.raises(AdanoiseError, match="past the end of its schedule"):
        lr.step()
    with pytest.raises(AdanoiseError, match="past the end of the schedule"):
        CosineRestarts(0.05, epochs=2, steps_per_epoch=3, restart_epochs=1).lr_at(6)


def test_unused_parameters_get_no_gradient_noise_when_gradients_are_zeroed_not_freed():
    net = torch.nn.ModuleDict({"used": torch.nn.Linear(32, 10), "unused": torch.nn.Linear(32, 10)})
    opt = torch.optim.SGD(net.parameters(), lr=LR)
    noise = AdaptiveNoise(
        net.parameters(), 4, "gaussian", seed=0, weight_noise_scale="none", **FIRING
    )
    for p in net.parameters():
        p.grad = torch.zeros_like(p)  # as after a first zero_grad(set_to_none=False)
    before = flat(net["unused"])
    noisy = 0
    for _ in range(4):
        noise.start_epoch()
        for x, y in data():
            opt.zero_grad(set_to_none=False)
            F.cross_entropy(net["used"](x), y).backward()
            noise.before_step()
            assert net["unused"].weight.grad.abs().max() == 0
            noisy += noise.policy.grad_sigma(noise.grad_sigma, noise.step) > 0
            opt.step()
        noise.end_epoch(train_loss=1.0, val_loss=1.0)
    assert noisy > 0, "gradient noise should fire"
    assert torch.equal(flat(net["unused"]), before)


class NoFloat64(TorchFunctionMode):
    """Fails any torch call that makes or takes a float64 tensor, as Apple's MPS would."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if kwargs.get("dtype") == torch.float64:
            raise AssertionError(f"{func} asked for float64")
        out = func(*args, **kwargs)
        if isinstance(out, torch.Tensor) and out.dtype == torch.float64:
            raise AssertionError(f"{func} made a float64 tensor")
        return out


def test_no_float64_is_needed():
    batches = data()
    net = model()
    opt = torch.optim.SGD(net.parameters(), lr=LR)
    noise = AdaptiveNoise(net.parameters(), EPOCHS, "uniform", seed=0, weight_noise_scale="relative", **FIRING)
    weight_noise = []
    with NoFloat64():
        for _ in range(EPOCHS):
            noise.start_epoch()
            for x, y in batches:
                opt.zero_grad()
                F.cross_entropy(net(x), y).backward()
                noise.before_step()
                opt.step()
            decision = noise.end_epoch(train_loss=1.0, val_loss=1.0)
            weight_noise.append(noise.last_applied["weight_sigma"])
    assert decision.epoch == EPOCHS and max(weight_noise) > 0
