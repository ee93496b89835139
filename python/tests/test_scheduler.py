"""The scheduler and the LR schedule through Python against the reference
streams, the `adanoise` command, and its own state round trip."""

import json

import pytest

import adanoise
from adanoise import AdanoiseError, CosineRestarts, NoiseScheduler

from conftest import FIXTURES, run_adanoise

EXAMPLES = ["plateau", "overfit", "mixed"]


def observations(name):
    path = FIXTURES / f"example-{name}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def replay(name, **thresholds):
    scheduler = NoiseScheduler(300, **thresholds)
    return [
        scheduler.observe(
            epoch=o["epoch"],
            train_loss=o["train_loss"],
            val_loss=o["val_loss"],
            grad_norm=o["grad_norm"],
            weight_update=o["weight_update"],
        )
        for o in observations(name)
    ]


def rel_close(a, b):
    return a == b if b == 0 else abs((a - b) / b) <= 1e-12


@pytest.mark.parametrize("name", EXAMPLES)
def test_reference_streams_give_the_reference_decisions(name):
    got = replay(name)
    want = [
        json.loads(line)
        for line in (FIXTURES / f"example-{name}.decisions.jsonl").read_text().splitlines()
    ]
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.epoch == w["epoch"]
        assert g.flags == w["flags"], w["epoch"]
        assert g.cooldown == w["cooldown"], w["epoch"]
        assert rel_close(g.grad_sigma, w["grad_sigma"]), (w["epoch"], g, w)
        assert rel_close(g.weight_sigma, w["weight_sigma"]), (w["epoch"], g, w)


@pytest.mark.parametrize("name", EXAMPLES)
def test_python_decides_exactly_as_the_command(name):
    text = run_adanoise("noise-replay", str(FIXTURES / f"example-{name}.jsonl"))
    cli = [json.loads(line) for line in text.splitlines()]
    assert [d.to_dict() for d in replay(name)] == cli


def test_thresholds_are_the_toml_keys():
    fired = replay("plateau", min_epochs_before_flag=20, grad_plateau=0.05)
    default = replay("plateau")
    assert [d.to_dict() for d in fired] != [d.to_dict() for d in default]
    cli = run_adanoise(
        "noise-replay",
        str(FIXTURES / "example-plateau.jsonl"),
        "--min-epochs-before-flag",
        "20",
        "--grad-plateau",
        "0.05",
    )
    assert [d.to_dict() for d in fired] == [json.loads(line) for line in cli.splitlines()]


def test_a_state_dict_round_trip_decides_as_an_uninterrupted_run():
    obs = observations("mixed")
    whole = replay("mixed")
    first = NoiseScheduler(300)
    for o in obs[:150]:
        first.observe(**{k: o[k] for k in ("epoch", "train_loss", "val_loss", "grad_norm", "weight_update")})
    state = json.loads(json.dumps(first.state_dict()))
    resumed = NoiseScheduler(300)
    resumed.load_state_dict(state)
    rest = [
        resumed.observe(**{k: o[k] for k in ("epoch", "train_loss", "val_loss", "grad_norm", "weight_update")})
        for o in obs[150:]
    ]
    assert [d.to_dict() for d in rest] == [d.to_dict() for d in whole[150:]]


def test_learning_rates_match_the_command():
    options = dict(lr_max=0.1, epochs=6, steps_per_epoch=7, restart_epochs=2, t_mult=1.5)
    schedule = CosineRestarts(**options)
    text = run_adanoise(
        "lr-schedule",
        "--lr-max", "0.1", "--epochs", "6", "--steps-per-epoch", "7",
        "--restart-epochs", "2", "--t-mult", "1.5",
    )
    rows = [line.split(",") for line in text.splitlines()[1:]]
    assert len(rows) == schedule.total_steps == 42
    for step, _, lr in rows:
        assert abs(schedule.lr_at(int(step)) - float(lr)) <= 1e-12 * float(lr)


def test_learning_rates_match_the_reference_epoch_starts():
    schedule = CosineRestarts(1e-3, 300, 391)
    lines = (FIXTURES / "lr-paper-epoch-starts.csv").read_text().splitlines()[1:]
    for line in lines:
        step, _, want = line.split(",")
        got = schedule.lr_at(int(step))
        assert abs(got - float(want)) <= 1e-9 * float(want), step


def test_errors_are_python_exceptions_with_the_commands_sentences():
    with pytest.raises(AdanoiseError, match="unknown field `grad_plato`"):
        NoiseScheduler(300, grad_plato=0.1)
    with pytest.raises(AdanoiseError, match="sigma_min and sigma_max must satisfy"):
        NoiseScheduler(300, sigma_min=0.5, sigma_max=0.1)
    with pytest.raises(AdanoiseError, match="lr_final_max must lie in"):
        CosineRestarts(1e-3, 300, 391, lr_final_max=1.0)
    s = NoiseScheduler(3)
    with pytest.raises(AdanoiseError, match="epoch 2 was observed where epoch 1 was expected"):
        s.observe(epoch=2, train_loss=1, val_loss=1, grad_norm=1, weight_update=0.1)
    with pytest.raises(AdanoiseError, match="val_loss is -1"):
        s.observe(epoch=1, train_loss=1, val_loss=-1, grad_norm=1, weight_update=0.1)
    for e in (1, 2, 3):
        s.observe(epoch=e, train_loss=1, val_loss=1, grad_norm=1, weight_update=0.1)
    with pytest.raises(AdanoiseError, match="past the schedule length"):
        s.observe(epoch=4, train_loss=1, val_loss=1, grad_norm=1, weight_update=0.1)
    assert issubclass(AdanoiseError, ValueError)


def test_defaults_are_table_v():
    d = adanoise.defaults()
    assert d["noise_scheduler"]["min_epochs_before_flag"] == 70
    assert d["noise_scheduler"]["sigma_max"] == 0.05
    assert d["restart_epochs"] == 50
    assert NoiseScheduler(300).config == d["noise_scheduler"]
