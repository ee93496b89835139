"""`adanoise.run.RunDirectory`: config.toml files the command reads whatever the names and
numbers, a run reopened by the process that continues it (epochs past the state it
continues from redone), and a directory of another run, or one open elsewhere, refused
without a change."""

import copy
import json
import sys

import pytest
import torch
import torch.nn.functional as F

from adanoise import AdanoiseError
from adanoise.run import RunDirectory
from adanoise.torch import AdaptiveNoise

from conftest import run_adanoise
from helpers import FIRING, data, model

EPOCHS = 4


def make(seed=0, lr=0.1, weight_decay=1e-4):
    net = model()
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    noise = AdaptiveNoise(net.parameters(), EPOCHS, "gaussian", seed=seed, **FIRING)
    return net, opt, noise


def open_run(path, parts, model_name="mlp", lr=0.1, **options):
    net, opt, noise = parts
    return RunDirectory(path, model=model_name, optimizer=opt, lr=lr, epochs=EPOCHS, noise=noise, **options)


def epoch(parts, run, index, val_loss=1.0):
    """One epoch of the shared loop, ended and recorded."""
    net, opt, noise = parts
    noise.start_epoch()
    for x, y in data():
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        noise.before_step()
        opt.step()
    noise.end_epoch(train_loss=1.0 / index, val_loss=val_loss)
    if run is not None:
        run.record_epoch(train_loss=1.0 / index, train_acc=0.5, val_loss=val_loss, val_acc=0.5, lr=0.1)


def recorded(path):
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


def files(path):
    return {p.name: p.read_bytes() for p in sorted(path.iterdir()) if p.is_file() and p.name != ".lock"}


NAMES = [
    "emoji \U0001F600 net",
    "line\nbreak",
    'tab\there "quoted" back\\slash',
    "bell\x07 del\x7f escape \x1b[0m",
    "ünïcødé 中文 \u2028",
]


def test_any_model_name_and_every_number_is_written_as_toml_the_command_reads(tmp_path):
    runs = tmp_path / "runs"
    for i, name in enumerate(NAMES):
        parts = make()
        run = open_run(runs / f"run{i}", parts, model_name=name)
        epoch(parts, run, 1)
        run.finish()
    tomllib = pytest.importorskip("tomllib") if sys.version_info >= (3, 11) else None
    for i, name in enumerate(NAMES):
        text = (runs / f"run{i}" / "config.toml").read_text(encoding="utf-8")
        for line in text.splitlines():
            key, _, value = line.partition(" = ")
            try:
                number = float(value)
            except ValueError:
                continue
            if "." in value or "e" in value:
                assert repr(number) == value, f"{key} = {value} is not the shortest decimal of its value"
        assert "weight_decay = 0.0001\n" in text
        assert 'weight_noise_scale = "relative"\n' in text
        if tomllib is not None:
            config = tomllib.loads(text)
            assert config["model_name"] == name
            assert config["weight_decay"] == 1e-4 and config["lr"] == 0.1
        run_adanoise("plot", str(runs / f"run{i}"))
    report = run_adanoise("report", str(runs))
    assert "emoji \U0001F600 net" in report, report


def test_a_seed_a_toml_integer_cannot_hold_is_refused_before_anything_is_written(tmp_path):
    parts = make()
    with pytest.raises(AdanoiseError, match="seed"):
        open_run(tmp_path / "run", parts, seed=2**70)
    assert not (tmp_path / "run").exists()
    net = model()
    for seed in (2**63, 2**64, 2**70):
        with pytest.raises(AdanoiseError, match="seed must be a whole number from 0 to"):
            AdaptiveNoise(net.parameters(), EPOCHS, seed=seed)
    largest = AdaptiveNoise(net.parameters(), EPOCHS, seed=2**63 - 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    run = RunDirectory(tmp_path / "largest", model="mlp", optimizer=opt, lr=0.1, epochs=EPOCHS, noise=largest)
    epoch((net, opt, largest), run, 1)
    run.finish()
    assert "largest" in run_adanoise("report", str(tmp_path))


def test_the_optimizers_weight_decay_is_recorded_and_groups_that_differ_must_say_which(tmp_path):
    parts = make(weight_decay=5e-4)
    open_run(tmp_path / "a", parts).finish()
    assert "weight_decay = 0.0005\n" in (tmp_path / "a" / "config.toml").read_text()
    net = model()
    opt = torch.optim.SGD(
        [{"params": net[0].parameters()}, {"params": net[2].parameters(), "weight_decay": 0.0}],
        lr=0.1, weight_decay=1e-4,
    )
    noise = AdaptiveNoise(net.parameters(), EPOCHS, **FIRING)
    with pytest.raises(AdanoiseError, match="weight_decay="):
        RunDirectory(tmp_path / "b", model="mlp", optimizer=opt, lr=0.1, epochs=EPOCHS, noise=noise)
    assert not (tmp_path / "b").exists()
    named = RunDirectory(
        tmp_path / "b", model="mlp", optimizer=opt, lr=0.1, epochs=EPOCHS, noise=noise, weight_decay=1e-4
    )
    named.finish()
    assert "weight_decay = 0.0001\n" in (tmp_path / "b" / "config.toml").read_text()


def test_a_run_continued_from_an_older_state_redoes_the_epochs_past_it(tmp_path):
    path = tmp_path / "run"
    parts = make()
    run = open_run(path, parts)
    epoch(parts, run, 1)
    epoch(parts, run, 2)
    saved = (
        json.loads(json.dumps(parts[2].state_dict())),
        {k: v.clone() for k, v in parts[0].state_dict().items()},
        copy.deepcopy(parts[1].state_dict()),
    )
    epoch(parts, run, 3)  # recorded, then lost: the process dies before its next save
    kept = recorded(path)[:2]
    run.close()

    resumed = make()
    resumed[0].load_state_dict(saved[1])
    resumed[1].load_state_dict(saved[2])
    resumed[2].load_state_dict(saved[0])
    run = open_run(path, resumed)
    assert recorded(path) == kept, "the epoch past the state is dropped"
    epoch(resumed, run, 3)
    epoch(resumed, run, 4)
    run.finish()
    lines = recorded(path)
    assert [m["epoch"] for m in lines] == [1, 2, 3, 4]
    assert lines[:2] == kept
    summary = json.loads((path / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["epochs_done"] == 4


def test_a_directory_of_another_run_or_state_is_refused_and_left_as_it_was(tmp_path):
    path = tmp_path / "run"
    parts = make()
    run = open_run(path, parts)
    epoch(parts, run, 1)
    epoch(parts, run, 2)
    run.finish()
    before = files(path)
    with pytest.raises(AdanoiseError, match=r"lr: 0\.1 there, 0\.2 here"):
        open_run(path, make(lr=0.2), lr=0.2)
    with pytest.raises(AdanoiseError, match="seed: 0 there, 1 here"):
        open_run(path, make(seed=1))
    with pytest.raises(AdanoiseError, match="observed none"):
        open_run(path, make())  # a fresh AdaptiveNoise: continuing needs the run's state
    ahead = make()
    for i in (1, 2, 3):
        epoch(ahead, None, i)
    with pytest.raises(AdanoiseError, match="records 2 epochs"):
        open_run(path, ahead)
    elsewhere = make()
    epoch(elsewhere, None, 1, val_loss=3.0)
    epoch(elsewhere, None, 2, val_loss=1.0)
    with pytest.raises(AdanoiseError, match="decision"):
        open_run(path, elsewhere)
    assert files(path) == before
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(AdanoiseError, match="no config.toml"):
        open_run(tmp_path / "foreign", make())


def test_one_writer_at_a_time_and_nothing_recorded_after_finish(tmp_path):
    path = tmp_path / "run"
    parts = make()
    first = open_run(path, parts)
    with pytest.raises(AdanoiseError, match="open in another RunDirectory"):
        open_run(path, make())
    first.finish()
    epoch(parts, None, 1)
    with pytest.raises(AdanoiseError, match="finish"):
        first.record_epoch(train_loss=1.0, train_acc=0.5, val_loss=1.0, val_acc=0.5, lr=0.1)
    assert not (path / "metrics.jsonl").exists()
    open_run(path, make()).close()


def test_a_refused_record_writes_nothing_and_a_cut_line_is_dropped_on_reopening(tmp_path):
    path = tmp_path / "run"
    parts = make()
    run = open_run(path, parts)
    epoch(parts, run, 1)
    epoch(parts, None, 2)
    with pytest.raises(AdanoiseError, match="val_acc is nan"):
        run.record_epoch(train_loss=0.5, train_acc=0.5, val_loss=1.0, val_acc=float("nan"), lr=0.1)
    line = run.record_epoch(train_loss=0.5, train_acc=0.5, val_loss=1.0, val_acc=0.6, lr=0.1)
    line["decision"]["epoch"] = 99  # the returned line is the caller's
    run.close()
    assert [m["epoch"] for m in recorded(path)] == [1, 2]
    state = json.loads(json.dumps(parts[2].state_dict()))
    with open(path / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 3, "train_lo')  # a kill while appending
    resumed = make()
    resumed[2].load_state_dict(state)
    run = open_run(path, resumed)
    assert [m["epoch"] for m in recorded(path)] == [1, 2]
    assert json.loads((path / "summary.json").read_text())["final_epoch"]["decision"]["epoch"] == 2
    run.close()


# -- the field's policies and label smoothing ---------------------------------------------

POLICY_KEYS = (
    "noise_sigma", "anneal_eta", "anneal_gamma", "anti_pgd_sigma", "perturb_threshold",
    "perturb_interval", "perturb_radius", "langevin_temperature", "label_noise", "shrink_every",
    "shrink_factor", "shrink_sigma",
)


def perturbed_run(path, label_smoothing=0.1):
    """A run of the perturbed policy (firing at steps 0 and 3 of each four-step epoch pair),
    recorded with label smoothing."""
    net = model()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    noise = AdaptiveNoise(
        net.parameters(), 2, "uniform", seed=0, policy="perturbed", perturb_threshold=1e6,
        perturb_interval=3, perturb_radius=0.5, optimizer=opt,
    )
    run = RunDirectory(path, model="mlp", optimizer=opt, lr=0.1, epochs=2, noise=noise,
                       label_smoothing=label_smoothing)
    return (net, opt, noise), run


def test_config_records_every_policy_parameter_and_label_smoothing_and_epochs_their_noise(tmp_path):
    tomllib = pytest.importorskip("tomllib")
    path = tmp_path / "run"
    parts, run = perturbed_run(path)
    for index in (1, 2):
        epoch(parts, run, index)
    run.finish()
    config = tomllib.loads((path / "config.toml").read_text())
    policy = parts[2].policy.to_dict()
    assert config["noise_policy"] == "perturbed"
    assert {k: config[k] for k in POLICY_KEYS} == {k: policy[k] for k in POLICY_KEYS}
    assert (config["perturb_interval"], config["perturb_radius"], config["label_smoothing"]) == (3, 0.5, 0.1)
    applied = [m["noise_applied"] for m in recorded(path)]
    assert [a["perturbed_steps"] for a in applied] == [[0, 3], [6]]
    with pytest.raises(AdanoiseError, match="label_smoothing must be a number from 0 to below 1"):
        perturbed_run(tmp_path / "other", label_smoothing=1.0)


def test_a_run_recorded_before_the_new_keys_reopens_and_gains_them(tmp_path):
    path = tmp_path / "run"
    parts = make()
    run = open_run(path, parts)
    epoch(parts, run, 1)
    state = json.loads(json.dumps(parts[2].state_dict()))
    run.close()
    config = path / "config.toml"
    newer = config.read_text()
    added = [k for k in POLICY_KEYS[3:]] + ["label_smoothing"]
    older = "".join(line + "\n" for line in newer.splitlines() if line.partition(" = ")[0] not in added)
    assert older != newer
    config.write_text(older)
    resumed = make()
    resumed[2].load_state_dict(state)
    run = open_run(path, resumed)
    assert config.read_text() == newer
    run.close()
    config.write_text(older.replace("noise_sigma = 0.01", "noise_sigma = 0.02"))
    with pytest.raises(AdanoiseError, match="noise_sigma: 0.02 there, 0.01 here"):
        open_run(path, resumed)


def test_the_report_labels_a_new_policy_and_label_smoothing(tmp_path):
    """Needs an `adanoise` that knows the new config keys."""
    path = tmp_path / "runs" / "perturbed"
    parts, run = perturbed_run(path)
    for index in (1, 2):
        epoch(parts, run, index)
    run.finish()
    report = run_adanoise("report", str(tmp_path / "runs"))
    assert parts[2].policy.label() in report, report
    assert "label smoothing 0.1" in report, report
