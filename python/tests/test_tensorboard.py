"""`adanoise train --tensorboard` writes event files that TensorBoard's own reader
loads, holding exactly the values of the run's metrics.jsonl."""

import json

import pytest

from conftest import run_adanoise

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import (  # noqa: E402
    EventAccumulator,
)

EPOCH_TAGS = {
    "epoch/train_loss": "train_loss",
    "epoch/train_acc": "train_acc",
    "epoch/val_loss": "val_loss",
    "epoch/val_acc": "val_acc",
    "epoch/test_loss": "test_loss",
    "epoch/test_acc": "test_acc",
    "epoch/lr": "lr",
    "epoch/grad_norm": "grad_norm",
    "epoch/weight_update": "weight_update",
    "epoch/epoch": "epoch",
}


def train(tmp_path, *extra):
    data = tmp_path / "data"
    run_adanoise("data", "synthetic", "--data-dir", str(data), "--train", "300", "--test", "60")
    run = tmp_path / "run"
    tb = tmp_path / "tb"
    run_adanoise(
        "train", "--model", "baby-cnn", "--optimizer", "sgd", "--lr", "0.05",
        "--epochs", "4", "--batch-size", "32", "--val-split", "60",
        "--data-dir", str(data), "--out", str(run), "--offline",
        "--noise", "gaussian", "--min-epochs-before-flag", "1", "--flag-window", "1",
        "--grad-plateau", "0.9", "--low-weight-update", "0.5", "--val-plateau-delta", "0.9",
        "--tensorboard", str(tb), "--tensorboard-every", "3", *extra,
    )
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # Each run logs into a folder of its own, named as its run directory.
    acc = EventAccumulator(str(tb / run.name), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return metrics, acc


def test_epoch_values_equal_the_metrics_file(tmp_path):
    metrics, acc = train(tmp_path)
    steps = [m["steps"] for m in metrics]
    for tag, key in EPOCH_TAGS.items():
        events = acc.Scalars(tag)
        assert [e.step for e in events] == steps, tag
        for event, m in zip(events, metrics):
            assert event.value == pytest.approx(m[key], rel=1e-6, abs=1e-9), (tag, m["epoch"])
    for tag, key in (("noise/grad_sigma", "grad_sigma"), ("noise/weight_sigma", "weight_sigma")):
        values = [e.value for e in acc.Scalars(tag)]
        assert values == pytest.approx([m["noise_applied"][key] for m in metrics], rel=1e-6)
    assert any(m["noise_applied"]["grad_sigma"] > 0 for m in metrics), "noise should fire"


def test_decisions_are_text_and_steps_are_logged(tmp_path):
    metrics, acc = train(tmp_path)
    texts = acc.Tensors("noise/decision")
    assert [t.step for t in texts] == [m["steps"] for m in metrics]
    decoded = [t.tensor_proto.string_val[0].decode() for t in texts]
    for text, m in zip(decoded, metrics):
        d = m["decision"]
        assert text.startswith(f"after epoch {m['epoch']}:")
        for flag in d["flags"]:
            assert flag in text
        if not d["flags"]:
            assert text.endswith("no flags")
    lr = acc.Scalars("step/lr")
    assert len(lr) >= 4 and all(b.step > a.step for a, b in zip(lr, lr[1:]))
    assert len(acc.Scalars("step/train_loss")) == len(lr)


def test_a_killed_and_resumed_run_continues_the_same_curves(tmp_path):
    """Killed outright in the middle of an epoch and resumed from its last checkpoint:
    TensorBoard drops what the killed process logged past that checkpoint, so every curve
    has each step once, with the metrics' values."""
    import signal
    import subprocess
    import time

    from conftest import adanoise_bin

    data = tmp_path / "data"
    run_adanoise("data", "synthetic", "--data-dir", str(data), "--train", "2000", "--test", "100")
    run, tb = tmp_path / "run", tmp_path / "tb"
    args = [
        adanoise_bin(), "train", "--model", "baby-cnn", "--optimizer", "sgd", "--lr", "0.05",
        "--epochs", "30", "--batch-size", "20", "--data-dir", str(data), "--out", str(run),
        "--offline", "--tensorboard", str(tb), "--tensorboard-every", "7", "--threads", "1",
    ]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    metrics_file = run / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline:
        if metrics_file.exists() and len(metrics_file.read_text().splitlines()) >= 2:
            break
        time.sleep(0.02)
    time.sleep(0.3)  # into the next epoch, past the checkpoint
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=120) == -signal.SIGKILL
    subprocess.run([*args, "--resume"], check=True, capture_output=True)
    metrics = [json.loads(line) for line in metrics_file.read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == list(range(1, 31))
    acc = EventAccumulator(str(tb / run.name), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    events = acc.Scalars("epoch/val_loss")
    assert [e.step for e in events] == [m["steps"] for m in metrics]
    assert [e.value for e in events] == pytest.approx([m["val_loss"] for m in metrics], rel=1e-6)
    steps = [e.step for e in acc.Scalars("step/lr")]
    assert steps == sorted(set(steps)), "a step logged twice"
