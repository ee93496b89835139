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

A run resumed from a checkpoint opens its directory again with the
`AdaptiveNoise` loaded from that checkpoint: the directory must hold a run with
the same settings (only its length, `epochs`, may change), and the epochs it recorded
after the checkpoint are dropped, to be recorded again as they are redone. One
process writes a directory at a time: it is locked (`.lock`, the lock the
command takes) from the constructor to `finish()` or `close()`.
"""

from __future__ import annotations

import copy
import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from ._adanoise import AdanoiseError, defaults_dict

__all__ = ["RunDirectory", "optimizer_kind"]

_MODELS = ("baby-cnn", "tiny-cnn", "simple-cnn", "resnet18")
_OPTIMIZERS = ("sgd", "sgd-momentum", "adam")
# TOML integers are signed 64-bit.
_TOML_INT = (-(1 << 63), (1 << 63) - 1)
# The key a resumed run may change: its length.
_RESIZABLE = {"epochs"}
# Keys a run's config gained after runs were recorded without them: a config that lacks one
# was made with its default, as the command reads it.
_ADDED_KEYS = (
    "anti_pgd_sigma", "perturb_threshold", "perturb_interval", "perturb_radius",
    "langevin_temperature", "label_noise", "shrink_every", "shrink_factor", "shrink_sigma",
    "label_smoothing",
)
# The command's lock file: with the temporary files a killed write leaves, all a run
# directory may hold before its config.toml.
_LOCK_FILE = ".lock"
# The characters a TOML basic string escapes by a short form.
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


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


def _toml_string(key: str, text: str) -> str:
    """A TOML basic string: the characters themselves (UTF-8), with the quote, the
    backslash and the control characters escaped."""
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04X}")
        elif 0xD800 <= code <= 0xDFFF:
            raise AdanoiseError(
                f"{key} holds a lone surrogate (U+{code:04X}), which no UTF-8 file can hold: "
                "pass a string of real characters"
            )
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _toml_value(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        if not _TOML_INT[0] <= value <= _TOML_INT[1]:
            raise AdanoiseError(
                f"{key} = {value} cannot be recorded in config.toml, whose integers are signed 64-bit: "
                "pass a number from -2**63 to 2**63 - 1"
            )
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise AdanoiseError(f"{key} = {value} cannot be recorded in config.toml: pass a finite number")
        # repr is the shortest decimal that reads back as the same double.
        return repr(value)
    if isinstance(value, str):
        return _toml_string(key, value)
    raise AdanoiseError(
        f"{key} = {value!r} cannot be recorded in config.toml: pass a bool, an int, a float or a str"
    )


def _config_entries(text: str) -> dict[str, str] | None:
    """The `key = value` lines of a config.toml as RunDirectory writes it, keyed
    `table.key` inside a table; None for a file of another form."""
    entries: dict[str, str] = {}
    table = ""
    for line in text.splitlines():
        if not line.strip():
            continue
        if line.startswith("[") and line.endswith("]"):
            table = line[1:-1]
            continue
        key, sep, value = line.partition(" = ")
        if not sep or not key or " " in key:
            return None
        entries[f"{table}.{key}" if table else key] = value
    return entries


def _weight_decay(optimizer: Any, given: float | None) -> float | None:
    """The L2 weight decay to record: `given`, or the torch optimiser's (the same in every
    group that trains); None for an optimiser given by name."""
    if given is not None:
        if isinstance(given, bool) or not isinstance(given, (int, float)) or not math.isfinite(given) or given < 0:
            raise AdanoiseError(f"weight_decay must be a finite number >= 0 (got {given!r})")
        return float(given)
    if isinstance(optimizer, str):
        return None
    groups = [g for g in optimizer.param_groups if g.get("initial_lr", g.get("lr", 0)) != 0] or optimizer.param_groups
    values = sorted({float(g.get("weight_decay", 0.0)) for g in groups})
    if len(values) > 1:
        raise AdanoiseError(
            f"the optimiser's parameter groups decay their weights by {', '.join(map(repr, values))}: pass "
            "weight_decay= with the one the run should be recorded with"
        )
    return values[0]


class _Lock:
    """The exclusive lock on a run directory's `.lock` (the command's lock: an OS file lock,
    released when the process ends), holding the holder's PID."""

    def __init__(self, path: Path) -> None:
        self.fd: int | None = None
        try:
            import fcntl
        except ImportError:  # No flock here: keeping to one writer is the caller's part.
            return
        fd = os.open(path / _LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        # A process that only probes the lock holds it for an instant: try for a second.
        for attempt in range(10):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt == 9:
                    pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                    os.close(fd)
                    if pid == str(os.getpid()):
                        raise AdanoiseError(
                            f"{path} is open in another RunDirectory of this process: finish() or close() "
                            "that one first"
                        ) from None
                    raise AdanoiseError(
                        f"{path} is open in another RunDirectory or adanoise command (PID {pid}): wait for "
                        "it to end, or stop it, then open the directory again"
                    ) from None
                time.sleep(0.1)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _write_atomic(path: Path, text: str) -> None:
    """Replaces `path` with `text`: a temporary file beside it, synced, then renamed."""
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{os.getpid()}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
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
    `optimizer`: the torch optimiser (its kind and weight decay are recorded) or its report
    name. `lr`: the initial peak learning rate; `epochs`: the run's epochs. `noise`: the
    run's `AdaptiveNoise` (its kind, policy, seed and thresholds are recorded, and each
    epoch's decision is read from it). `weight_decay`: the L2 weight decay to record, where
    the optimiser's groups differ (or it is given by name). `label_smoothing`: the training
    loss's label smoothing (PyTorch's `F.cross_entropy(..., label_smoothing=)`; 0, the
    default: none), recorded so that the report labels the run with it. `batch_size` (the
    images of one optimiser step), `val_split`, `seed` and `extra` (more config keys) are
    recorded as given; seeds and integers must fit a TOML integer (signed 64-bit).

    The directory must be new or empty, or hold a run recorded by a RunDirectory with the
    same settings that `noise` continues (an AdaptiveNoise loaded from the run's state):
    then the epochs recorded past the state are dropped, to be recorded again.
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
        weight_decay: float | None = None,
        label_smoothing: float = 0.0,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.path = Path(path)
        self.noise = noise
        self.epochs = int(epochs)
        if self.epochs < 1:
            raise AdanoiseError(f"epochs must be at least 1 (got {epochs!r})")
        if (
            isinstance(label_smoothing, bool)
            or not isinstance(label_smoothing, (int, float))
            or not 0 <= label_smoothing < 1
        ):
            raise AdanoiseError(
                f"label_smoothing must be a number from 0 to below 1, as PyTorch's label_smoothing "
                f"(got {label_smoothing!r}): pass the one the training loss uses"
            )
        text = self._config_text(
            model, optimizer, lr, noise, batch_size, val_split, seed, weight_decay, float(label_smoothing), extra
        )
        # Everything is checked before the directory is touched.
        if self.path.exists() and not self.path.is_dir():
            raise AdanoiseError(f"{self.path} is a file, not a directory: choose another run directory")
        self._refuse_foreign()
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock: _Lock | None = _Lock(self.path)
        try:
            self.history = self._open(text)
        except BaseException:
            self._lock.release()
            raise
        self._started = time.perf_counter()
        self._write_summary("finished" if len(self.history) >= self.epochs else "running")

    # -- opening -------------------------------------------------------------------------

    def _config_text(
        self, model: str, optimizer: Any, lr: float, noise: Any, batch_size: int, val_split: int,
        seed: int | None, weight_decay: float | None, label_smoothing: float, extra: dict[str, Any] | None,
    ) -> str:
        settings = noise.settings
        policy = settings["policy"]
        seed = settings["seed"] if seed is None else seed
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= _TOML_INT[1]:
            raise AdanoiseError(
                f"seed must be a whole number from 0 to 2**63 - 1, the range config.toml and the command "
                f"hold (got {seed!r}): pass a seed in that range"
            )
        if not isinstance(model, str) or not model:
            raise AdanoiseError(f"model must be a non-empty name (got {model!r})")
        config: dict[str, Any] = {
            "model": model if model in _MODELS else "other",
            "optimizer": optimizer_kind(optimizer),
            "lr": float(lr),
            "epochs": self.epochs,
            "schedule_epochs": int(settings["epochs"]),
            "batch_size": int(batch_size),
            "seed": seed,
            "val_split": int(val_split),
            "noise": settings["noise"],
            "noise_policy": policy["policy"],
            "noise_sigma": policy["noise_sigma"],
            "anneal_eta": policy["anneal_eta"],
            "anneal_gamma": policy["anneal_gamma"],
            # Always written: a config without it is read as the reading of older runs.
            "weight_noise_scale": policy["weight_noise_scale"],
            **{key: policy[key] for key in _ADDED_KEYS if key != "label_smoothing"},
            "label_smoothing": label_smoothing,
        }
        decay = _weight_decay(optimizer, weight_decay)
        if decay is not None:
            config["weight_decay"] = decay
        if model not in _MODELS:
            config["model_name"] = model
        for key, value in (extra or {}).items():
            if key in config or key == "noise_scheduler":
                raise AdanoiseError(f"extra sets {key!r}, which the run records itself")
            config[key] = value
        lines = [f"{k} = {_toml_value(k, v)}" for k, v in config.items()]
        lines.append("")
        lines.append("[noise_scheduler]")
        lines += [f"{k} = {_toml_value('noise_scheduler.' + k, v)}" for k, v in settings["thresholds"].items()]
        return "\n".join(lines) + "\n"

    def _entries(self) -> list[Path]:
        return [p for p in self.path.iterdir() if p.name != _LOCK_FILE and not p.name.startswith(".tmp-")]

    def _refuse_foreign(self) -> None:
        if self.path.exists() and self._entries() and not (self.path / "config.toml").exists():
            raise AdanoiseError(
                f"{self.path} holds files but no config.toml: it is not a run directory; choose another run directory"
            )

    def _open(self, text: str) -> list[dict[str, Any]]:
        """Writes a new run's config, or takes up the run the directory holds; returns the
        epochs recorded so far."""
        config = self.path / "config.toml"
        if not config.exists():
            if self._entries():
                self._refuse_foreign()
            done = self.noise.scheduler.observed
            if done:
                raise AdanoiseError(
                    f"the AdaptiveNoise has observed {done} epochs, but {self.path} records none: a run "
                    "directory holds a run from its first epoch; open the directory the run was recorded in, "
                    "or record a run that starts here"
                )
            _write_atomic(config, text)
            return []
        self._check_same_run(config.read_text(encoding="utf-8"), text)
        history, kept = self._recorded()
        if kept is not None:
            _write_atomic(self.path / "metrics.jsonl", kept)
        if config.read_text(encoding="utf-8") != text:
            _write_atomic(config, text)
        return history

    def _check_same_run(self, stored_text: str, text: str) -> None:
        stored, ours = _config_entries(stored_text), _config_entries(text)
        if stored is None:
            raise AdanoiseError(
                f"{self.path}/config.toml was not written by a RunDirectory: {self.path} holds another run; "
                "choose another run directory"
            )
        defaults = defaults_dict()
        for key in _ADDED_KEYS:
            if key not in stored:
                stored[key] = _toml_value(key, defaults[key])
        differ = [
            k for k in sorted(set(stored) | set(ours))
            if k not in _RESIZABLE and stored.get(k) != ours.get(k)
        ]
        if differ:
            raise AdanoiseError(
                f"{self.path} holds a run with other settings ("
                + ", ".join(f"{k}: {stored.get(k, '(unset)')} there, {ours.get(k, '(unset)')} here" for k in differ)
                + "): continue it with the same settings, or choose another run directory"
            )

    def _recorded(self) -> tuple[list[dict[str, Any]], str | None]:
        """The epochs the directory recorded up to the one `noise` continues from, and the
        text metrics.jsonl is to be cut back to (None: it stays as it is)."""
        path = self.path / "metrics.jsonl"
        text = path.read_text(encoding="utf-8") if path.exists() else ""
        done = self.noise.scheduler.observed
        complete: list[tuple[dict[str, Any], str]] = []
        for line in text.splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                break  # A line a kill cut short, and what follows it.
            if not isinstance(record, dict) or record.get("epoch") != len(complete) + 1:
                break
            complete.append((record, line))
        count = len(complete)
        if done == 0 and count:
            raise AdanoiseError(
                f"{self.path} holds a run that recorded {count} epoch{'s' if count != 1 else ''}, and this "
                "AdaptiveNoise has observed none: load the state the run saved (noise.load_state_dict) to "
                "continue it, or choose another run directory"
            )
        if count < done:
            raise AdanoiseError(
                f"{path} records {count} epoch{'s' if count != 1 else ''}, but the AdaptiveNoise continues "
                f"from epoch {done}: the directory holds another run, or was edited; open the run's own "
                "directory, or choose another run directory"
            )
        if done > self.epochs:
            raise AdanoiseError(
                f"the AdaptiveNoise has observed {done} epochs, more than the run's epochs ({self.epochs}): "
                "pass epochs= covering the whole run"
            )
        kept = complete[:done]
        if kept and kept[-1][0].get("decision") != self.noise.last_decision.to_dict():
            raise AdanoiseError(
                f"epoch {done}'s decision in {path} is not the one the AdaptiveNoise took: its state comes "
                "from another run; load the state this run saved, or choose another run directory"
            )
        new_text = "".join(line + "\n" for _, line in kept)
        return [record for record, _ in kept], (None if new_text == text else new_text)

    # -- recording -----------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._lock is None:
            raise AdanoiseError(
                f"the run directory {self.path} was closed (finish() or close()): open it again with a new "
                "RunDirectory to record more"
            )

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
        and the summary. A refusal records nothing; returns a copy of the line."""
        self._check_open()
        noise = self.noise
        decision = noise.last_decision
        if decision is None or decision.epoch != len(self.history) + 1 or noise.last_grad_norm is None:
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
                "noise_applied": copy.deepcopy(noise.last_applied),
                "decision": decision.to_dict(),
            }
        )
        for key, value in line.items():
            if isinstance(value, float) and not math.isfinite(value):
                raise AdanoiseError(f"{key} is {value}: record finite metrics (a diverged run: finish(message))")
        text = json.dumps(line)
        path = self.path / "metrics.jsonl"
        with open(path, "a", encoding="utf-8") as f:
            size = f.tell()
            try:
                f.write(text + "\n")
                f.flush()
                os.fsync(f.fileno())
            except BaseException:
                # A line half written (a full disk) would spoil every line after it.
                f.truncate(size)
                raise
        self._started = now
        self.history.append(line)
        self._write_summary("finished" if len(self.history) >= self.epochs else "running")
        return copy.deepcopy(line)

    def finish(self, message: str | None = None) -> None:
        """Marks the run finished (all its epochs recorded), or, with `message`, stopped
        early for that reason; then closes the directory."""
        self._check_open()
        done = len(self.history) >= self.epochs
        status = "finished" if done and message is None else ("diverged" if message else "running")
        self._write_summary(status, message)
        self.close()

    def close(self) -> None:
        """Releases the directory without marking it (a run that stops here and resumes
        later, or failed): another RunDirectory, or the command, may open it then."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

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
