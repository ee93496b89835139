"""A run directory in the `adanoise` command's format, written from your own
training loop, so that `adanoise report` and `adanoise plot` give your runs the
study's tables and Figure 1.

    from adanoise.run import RunDirectory
    run = RunDirectory("runs/mine", model="resnet18", optimizer=opt, lr=0.1, epochs=300, noise=noise)
    for epoch in ...:
        ...
        decision = noise.end_epoch(train_loss=tl, val_loss=vl)
        run.record_epoch(train_loss=tl, train_acc=ta, val_loss=vl, val_acc=va, lr=lr.get_last_lr()[0])
    run.finish()

It writes `config.toml` (the run's settings, as the command records them),
`metrics.jsonl` (one line per epoch, with what noise the epoch received and the
decision taken after it) and `summary.json`, each replaced or appended so that
a crash leaves what was complete. A model that is not one of the study's four
is recorded as `model = "other"` with its name, which the report shows.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from ._adanoise import AdanoiseError

__all__ = ["RunDirectory", "optimizer_kind"]

_MODELS = ("baby-cnn", "tiny-cnn", "simple-cnn", "resnet18")
_OPTIMIZERS = ("sgd", "sgd-momentum", "adam")


def optimizer_kind(optimizer: Any) -> str:
    """The report's name for a torch optimiser: "sgd", "sgd-momentum" or "adam"."""
    if isinstance(optimizer, str):
        if optimizer not in _OPTIMIZERS:
            raise AdanoiseError(f"optimizer must be one of {', '.join(_OPTIMIZERS)} (got {optimizer!r})")
        return optimizer
    name = type(optimizer).__name__
    if name == "SGD":
        momentum = optimizer.param_groups[0].get("momentum", 0)
        return "sgd-momentum" if momentum else "sgd"
    if name == "Adam":
        return "adam"
    raise AdanoiseError(
        f"the report's tables are for SGD, SGD with momentum and Adam; for a {name}, pass "
        "optimizer='sgd' | 'sgd-momentum' | 'adam' naming the table it belongs in"
    )


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise AdanoiseError(f"{value} cannot be recorded in config.toml")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    raise AdanoiseError(f"{value!r} cannot be recorded in config.toml")


def _write_atomic(path: Path, text: str) -> None:
    """Replaces `path` with `text`: a temporary file beside it, synced, then renamed."""
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{os.getpid()}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class RunDirectory:
    """A run directory of the command's format for a run trained by your own code.

    `model`: one of the study's four names, or your model's name (recorded as "other").
    `optimizer`: the torch optimiser (its kind is inferred) or its report name. `lr`: the
    initial peak learning rate; `epochs`: the run's epochs. `noise`: the run's
    `AdaptiveNoise` (its kind, policy, seed and thresholds are recorded, and each epoch's
    decision is read from it). `batch_size`, `val_split` and `extra` (more config keys)
    are recorded as given. The directory must be new or empty.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        model: str,
        optimizer: Any,
        lr: float,
        epochs: int,
        noise: Any,
        batch_size: int = 128,
        val_split: int = 0,
        seed: int | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.path = Path(path)
        if self.path.exists() and any(self.path.iterdir()):
            raise AdanoiseError(f"{self.path} exists and is not empty: choose another run directory")
        self.noise = noise
        self.epochs = int(epochs)
        settings = noise.settings
        policy = settings["policy"]
        config: dict[str, Any] = {
            "model": model if model in _MODELS else "other",
            "optimizer": optimizer_kind(optimizer),
            "lr": float(lr),
            "epochs": self.epochs,
            "schedule_epochs": int(settings["epochs"]),
            "batch_size": int(batch_size),
            "seed": int(settings["seed"] if seed is None else seed),
            "val_split": int(val_split),
            "noise": settings["noise"],
            "noise_policy": policy["policy"],
            "noise_sigma": policy["noise_sigma"],
            "anneal_eta": policy["anneal_eta"],
            "anneal_gamma": policy["anneal_gamma"],
            "weight_noise_scale": policy["weight_noise_scale"],
        }
        if model not in _MODELS:
            config["model_name"] = str(model)
        for key, value in (extra or {}).items():
            if key in config or key == "noise_scheduler":
                raise AdanoiseError(f"extra sets {key!r}, which the run records itself")
            config[key] = value
        lines = [f"{k} = {_toml_value(v)}" for k, v in config.items()]
        lines.append("")
        lines.append("[noise_scheduler]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in settings["thresholds"].items()]
        self.path.mkdir(parents=True, exist_ok=True)
        _write_atomic(self.path / "config.toml", "\n".join(lines) + "\n")
        self.history: list[dict[str, Any]] = []
        self._started = time.perf_counter()
        self._write_summary("running")

    def record_epoch(
        self,
        *,
        train_loss: float,
        train_acc: float,
        val_loss: float,
        val_acc: float,
        lr: float,
        test_loss: float | None = None,
        test_acc: float | None = None,
        images_per_s: float = 0.0,
    ) -> dict[str, Any]:
        """Records the epoch `noise` just ended (after its `end_epoch()`): one line of
        `metrics.jsonl` with its metrics, the noise it received and the decision after it,
        and the summary."""
        noise = self.noise
        decision = noise.last_decision
        if decision is None or decision.epoch != len(self.history) + 1:
            raise AdanoiseError(
                f"record_epoch() records the epoch AdaptiveNoise.end_epoch() just ended (epoch "
                f"{len(self.history) + 1}): call end_epoch() first, once per epoch"
            )
        now = time.perf_counter()
        line: dict[str, Any] = {
            "epoch": decision.epoch,
            "train_loss": float(train_loss),
            "train_acc": float(train_acc),
            "val_loss": float(val_loss),
            "val_acc": float(val_acc),
        }
        if test_loss is not None and test_acc is not None:
            line["test_loss"], line["test_acc"] = float(test_loss), float(test_acc)
        line.update(
            {
                "grad_norm": noise.last_grad_norm,
                "weight_update": noise.last_weight_update,
                "lr": float(lr),
                "steps": noise.step,
                "seconds": now - self._started,
                "images_per_s": float(images_per_s),
                "noise_applied": noise.last_applied,
                "decision": decision.to_dict(),
            }
        )
        for key, value in line.items():
            if isinstance(value, float) and not math.isfinite(value):
                raise AdanoiseError(f"{key} is {value}: record finite metrics (a diverged run: finish(message))")
        self._started = now
        text = json.dumps(line)
        with open(self.path / "metrics.jsonl", "a") as f:
            f.write(text + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.history.append(line)
        self._write_summary("finished" if len(self.history) >= self.epochs else "running")
        return line

    def finish(self, message: str | None = None) -> None:
        """Marks the run finished (all its epochs recorded), or, with `message`, stopped
        early for that reason."""
        done = len(self.history) >= self.epochs
        status = "finished" if done and message is None else ("diverged" if message else "running")
        self._write_summary(status, message)

    def _write_summary(self, status: str, message: str | None = None) -> None:
        best = None
        for m in self.history:
            if best is None or m["val_acc"] > best["val_acc"]:
                best = m
        summary = {
            "status": status,
            "epochs_done": len(self.history),
            "epochs": self.epochs,
            "final_epoch": self.history[-1] if self.history else None,
            "best_epoch": best,
            "message": message,
        }
        _write_atomic(self.path / "summary.json", json.dumps(summary, indent=2))
