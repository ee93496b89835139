"""adanoise in a PyTorch training loop.

- `CosineRestartsLR`: the study's learning-rate schedule as a PyTorch
  `LRScheduler`, stepped after every optimiser step; each parameter group
  follows it scaled to its own base rate.
- `AdaptiveNoise`: measures what the noise scheduler observes (the global
  gradient norm of every optimiser step, the relative weight update of every
  epoch), asks the scheduler after each epoch, and injects the noise of its
  policy into the next epoch: gradient noise at every optimiser step (after the
  gradients are complete and unscaled, before `optimizer.step()`, so before
  weight decay and momentum) and weight noise once at the epoch's start.

    model, optimizer = ..., torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    lr = CosineRestartsLR(optimizer, epochs=300, steps_per_epoch=len(loader))
    noise = AdaptiveNoise(model.parameters(), epochs=300, noise="gaussian", seed=0)
    for epoch in range(1, 301):
        noise.start_epoch()
        for x, y in loader:
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            noise.before_step()
            optimizer.step()
            lr.step()
        decision = noise.end_epoch(train_loss=..., val_loss=...)

With mixed precision, pass the `GradScaler` (`AdaptiveNoise(..., scaler=scaler)`)
and the optimiser (`noise.before_step(optimizer)`): the gradients are unscaled
first, and a step the scaler skips (gradients not finite) is skipped here too.
With gradient accumulation, call `before_step` once per optimiser step. Under
`torch.distributed` (DDP), every rank decides from the losses averaged over the
ranks and draws the same noise, so replicas stay identical.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Iterable, Sequence

import torch

from ._adanoise import AdanoiseError, CosineRestarts, Decision, NoisePolicy, NoiseScheduler

__all__ = ["AdaptiveNoise", "CosineRestartsLR"]

_NOISE_KINDS = ("none", "gaussian", "uniform")
_GRADIENT, _WEIGHT = 5, 6
_MASK = (1 << 64) - 1
# Seeds and counts a run's config.toml and metrics.jsonl can hold: TOML integers are signed
# 64-bit.
_LARGEST = (1 << 63) - 1
_FLOAT32_MAX = 3.4028234663852886e38
# What a state_dict() holds beside the scheduler's own state; a state with other keys is
# refused, so that a state of another version or object is never half-loaded.
_STATE_KEYS = {
    "version", "scheduler", "settings", "epoch", "step", "grad_sigma", "weight_sigma",
    "last_decision", "in_epoch",
}
# Version 3 keeps the epoch's gradient norms one by one, so that a resumed epoch sums
# exactly what an uninterrupted one sums; version 2 kept their sum.
_VERSION = 3
_IN_EPOCH_KEYS = {3: {"norms", "steps", "skipped", "start"}, 2: {"norm_sum", "steps", "skipped", "start"}}
# How a state saved before the weight-noise reading was recorded reads weight noise.
_UNRECORDED_WEIGHT_NOISE_SCALE = "absolute"


def _splitmix(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def _seed(seed: int, purpose: int, index: int, param: int) -> int:
    """A generator seed for one parameter of one draw, from the run seed, the purpose
    (gradient or weight noise), the step or epoch, and the parameter's position."""
    x = _splitmix(seed & _MASK)
    for part in (purpose, index, param):
        x = _splitmix(x ^ part)
    return x & ((1 << 63) - 1)


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _reject_sharded(params: Sequence[torch.nn.Parameter]) -> None:
    """FSDP and tensor-parallel parameters hold a shard of each weight per rank: the global
    gradient norm and a weight-noise draw would then be per shard, not per weight."""
    for p in params:
        sharded = type(p).__name__ in ("FlatParameter", "DTensor") or hasattr(p, "_sharding_spec")
        if sharded:
            raise AdanoiseError(
                "AdaptiveNoise does not support sharded parameters (FSDP, DTensor): the gradient "
                "norm and the noise are defined over whole weights; train with DDP, whose replicas "
                "hold whole weights"
            )


def _parameters(params: Any) -> list[torch.nn.Parameter]:
    """The trainable parameters of `params`: parameters, or an optimiser's param groups."""
    if isinstance(params, torch.nn.Module):
        raise AdanoiseError("pass model.parameters() (or optimizer.param_groups), not the model")
    if isinstance(params, torch.Tensor):
        params = [params]
    out: list[torch.nn.Parameter] = []
    for item in params:
        if isinstance(item, dict):
            if "params" not in item:
                raise AdanoiseError("a parameter group must be a dict with 'params', as in optimizer.param_groups")
            out.extend(_parameters(item["params"]))
        elif isinstance(item, torch.Tensor):
            if item.requires_grad:
                out.append(item)
        else:
            raise AdanoiseError(
                f"expected parameters or parameter groups, got {type(item).__name__}: "
                "pass model.parameters() or optimizer.param_groups"
            )
    seen: set[int] = set()
    return [p for p in out if not (id(p) in seen or seen.add(id(p)))]


class CosineRestartsLR(torch.optim.lr_scheduler.LRScheduler):
    """Cosine annealing with decaying restarts, stepped after every optimiser step.

    Each parameter group follows the schedule scaled to its own base rate (its `lr` when
    the scheduler is made): the first group with a rate above 0 takes `lr_final_max` and
    `lr_min` as given, every other group the same fractions of its own rate (or pass a
    list with one value per group). A group with rate 0 (frozen) stays at 0. The schedule
    covers `epochs * steps_per_epoch` optimiser steps; stepping past them is refused.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        epochs: int,
        steps_per_epoch: int,
        restart_epochs: int = 50,
        t_mult: float = 1.0,
        lr_final_max: float | Sequence[float] = 1e-5,
        lr_min: float | Sequence[float] = 1e-6,
        last_epoch: int = -1,
    ) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise AdanoiseError(f"CosineRestartsLR needs a torch optimizer, got {type(optimizer).__name__}")
        groups = optimizer.param_groups
        bases = [g.get("initial_lr", g["lr"]) for g in groups]
        reference = next((b for b in bases if b > 0), None)
        if reference is None:
            raise AdanoiseError("every parameter group has learning rate 0: nothing to schedule")

        def per_group(name: str, value: float | Sequence[float]) -> list[float]:
            if isinstance(value, (int, float)):
                return [value * b / reference for b in bases]
            values = list(value)
            if len(values) != len(groups):
                raise AdanoiseError(
                    f"{name} has {len(values)} values for {len(groups)} parameter groups: give one per group, or one number"
                )
            return values

        finals, floors = per_group("lr_final_max", lr_final_max), per_group("lr_min", lr_min)
        self._schedules: list[CosineRestarts | None] = []
        for i, base in enumerate(bases):
            if base == 0:
                self._schedules.append(None)
                continue
            try:
                self._schedules.append(
                    CosineRestarts(
                        base, epochs, steps_per_epoch, restart_epochs, t_mult, finals[i], floors[i]
                    )
                )
            except AdanoiseError as e:
                raise AdanoiseError(f"parameter group {i} (lr {base}): {e}") from None
        self.total_steps = epochs * steps_per_epoch
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        step = max(self.last_epoch, 0)
        if step > self.total_steps:
            raise AdanoiseError(
                f"CosineRestartsLR was stepped {step} times, past the end of its schedule "
                f"({self.total_steps} optimiser steps): make `epochs` cover the whole run"
            )
        # After the last optimiser step the scheduler is stepped once more: the rate it sets
        # then is never used, so it holds the last one.
        at = min(step, self.total_steps - 1)
        return [0.0 if s is None else s.lr_at(at) for s in self._schedules]

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.pop("_schedules", None)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # The schedule is this object's (a resumed run may make it longer): only the position
        # in it is taken from the state.
        schedules, total = self._schedules, self.total_steps
        super().load_state_dict({k: v for k, v in state_dict.items() if k not in ("_schedules", "total_steps")})
        self._schedules, self.total_steps = schedules, total


class AdaptiveNoise:
    """Adaptive noise injection around a PyTorch training loop (see the module's docs).

    `params`: the parameters the optimiser trains (`model.parameters()` or
    `optimizer.param_groups`; those with `requires_grad` are used, and buffers such as
    BatchNorm statistics never get noise). `epochs`: `E_max` of the noise damping.
    `noise`: "gaussian", "uniform", or "none" (decide and record only, the baseline).
    `seed`: a whole number from 0 to 2**63 - 1 (what a run's config.toml can record); makes
    the noise reproducible, whatever the interruptions (under `torch.distributed`, rank 0's
    seed is used on every rank). `policy`: "adaptive" (the scheduler's decisions),
    "constant" (gradient noise of `noise_sigma` at every step) or "annealed"
    (`sigma_t^2 = anneal_eta / (1 + t)^anneal_gamma`). `weight_noise_scale`: "relative"
    (the default: sigma times each tensor's root mean square), "absolute" (sigma per
    element, the study's text read literally) or "none", as the command's
    `--weight-noise-scale`. `scaler`: a `torch.amp.GradScaler`, for f16 mixed precision
    (`before_step` unscales with it). `skip_non_finite`: for a loop that unscales by itself
    and whose optimiser step skips non-finite gradients (a framework's mixed-precision
    plugin): such a step is then skipped here too. Other keywords are the scheduler's
    thresholds (`adanoise.NoiseScheduler`).
    """

    def __init__(
        self,
        params: Iterable[Any],
        epochs: int,
        noise: str = "gaussian",
        seed: int = 0,
        *,
        policy: str = "adaptive",
        noise_sigma: float = 0.01,
        anneal_eta: float = 0.01,
        anneal_gamma: float = 0.55,
        weight_noise_scale: str = "relative",
        scaler: Any = None,
        skip_non_finite: bool = False,
        **thresholds: float,
    ) -> None:
        if noise not in _NOISE_KINDS:
            raise AdanoiseError(f"noise must be one of {', '.join(_NOISE_KINDS)} (got {noise!r})")
        self.params = _parameters(params)
        if not self.params:
            raise AdanoiseError("no parameter requires a gradient: pass the parameters the optimiser trains")
        _reject_sharded(self.params)
        self.policy = NoisePolicy(
            policy,
            noise_sigma=noise_sigma,
            anneal_eta=anneal_eta,
            anneal_gamma=anneal_gamma,
            weight_noise_scale=weight_noise_scale,
        )
        self.policy.check_injects(noise)
        if scaler is not None and not hasattr(scaler, "unscale_"):
            raise AdanoiseError(f"scaler must be a torch.amp.GradScaler, got {type(scaler).__name__}")
        self.scaler = scaler
        self.skip_non_finite = skip_non_finite
        self.noise = noise
        self.seed = self._shared_seed(seed)
        self.scheduler = NoiseScheduler(epochs, **thresholds)
        self.settings = {
            "epochs": epochs,
            "noise": noise,
            "seed": self.seed,
            "policy": self.policy.to_dict(),
            "thresholds": self.scheduler.config,
            "params": [list(p.shape) for p in self.params],
        }
        # Every step's norm lands on one device, so that an epoch's norms are summed where
        # they are summed after a resume too.
        self._home = self.params[0].device
        self.epoch = 0
        self.step = 0
        self.grad_sigma = 0.0
        self.weight_sigma = 0.0
        self.last_decision: Decision | None = None
        self.last_grad_norm: float | None = None
        self.last_weight_update: float | None = None
        self.last_applied: dict[str, Any] | None = None
        self._in_epoch = False
        self._reset_epoch()
        self._touched = [False] * len(self.params)
        self._hooks = [
            p.register_post_accumulate_grad_hook(self._toucher(i)) for i, p in enumerate(self.params)
        ]

    # -- construction helpers ------------------------------------------------------------

    @staticmethod
    def _shared_seed(seed: int) -> int:
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= _LARGEST:
            raise AdanoiseError(
                f"seed must be a whole number from 0 to 2**63 - 1 = {_LARGEST}, the range a run's "
                f"config.toml can record (got {seed!r}): pass a seed in that range"
            )
        if _distributed():
            shared = [seed]
            torch.distributed.broadcast_object_list(shared, src=0)
            return int(shared[0])
        return seed

    def _toucher(self, i: int):
        def touched(_param: torch.Tensor) -> None:
            self._touched[i] = True

        return touched

    def _reset_epoch(self) -> None:
        # The epoch's running state. Only start_epoch(), a successful end_epoch() and
        # load_state_dict() replace it; saving it or a refused call leaves it as it is.
        self._pending_norms: list[torch.Tensor] = []
        # The sum of norms a version-2 state held without the norms themselves.
        self._norm_offset: float | None = None
        self._steps_in_epoch = 0
        self._skipped_in_epoch = 0
        self._start: list[torch.Tensor] | None = None

    def __deepcopy__(self, memo: dict) -> AdaptiveNoise:
        raise AdanoiseError(
            "an AdaptiveNoise cannot be copied: it is tied to its parameters by gradient hooks; make another "
            "on the copy's parameters with the same settings and load_state_dict(noise.state_dict())"
        )

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise AdanoiseError(
            "an AdaptiveNoise cannot be pickled: it is tied to its parameters by gradient hooks; save "
            "noise.state_dict() (torch.save) and load it into an AdaptiveNoise made with the same settings"
        )

    def remove_hooks(self) -> None:
        """Takes this object's gradient hooks off the parameters: it sees no more gradients
        (for an object replaced by another on the same parameters)."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    # -- the epoch -------------------------------------------------------------------------

    @property
    def injects(self) -> bool:
        """Whether this run applies noise (False for noise "none")."""
        return self.noise != "none"

    def start_epoch(self) -> None:
        """Begins the next epoch: remembers the weights (for its weight update), then adds
        the weight noise in force, if any."""
        if self._in_epoch:
            raise AdanoiseError(f"epoch {self.epoch} was started and not ended: call end_epoch() first")
        if self.epoch >= self.scheduler.epochs:
            raise AdanoiseError(
                f"epoch {self.epoch + 1} is past the noise schedule's {self.scheduler.epochs} epochs "
                "(E_max): make `epochs` cover the whole run"
            )
        self._reset_epoch()
        self._start = [p.detach().clone() for p in self.params]
        self.epoch += 1
        self._in_epoch = True
        sigma = self.policy.weight_sigma(self.weight_sigma) if self.injects else 0.0
        if sigma > 0:
            relative = self.policy.weight_noise_scale == "relative"
            with torch.no_grad():
                for i, p in enumerate(self.params):
                    noise = self._draw(p, sigma, _seed(self.seed, _WEIGHT, self.epoch, i))
                    if relative:
                        # sigma times the tensor's root mean square, just before the noise.
                        noise.mul_(p.detach().float().square().mean().sqrt().to(p.dtype))
                    p.add_(noise)

    def before_step(self, optimizer: torch.optim.Optimizer | None = None) -> bool:
        """Call once per optimiser step, after the last `backward()` of the step and right
        before `optimizer.step()` (or `scaler.step(optimizer)`): with a scaler, unscales the
        gradients first (pass the optimizer); records the global gradient norm (before noise
        and weight decay) and adds this step's gradient noise. Returns False for a step the
        scaler will skip (gradients not finite): it is not counted in the epoch's norm and
        gets no noise."""
        if not self._in_epoch:
            raise AdanoiseError("before_step() outside an epoch: call start_epoch() first")
        if self.scaler is not None and self.scaler.is_enabled():
            if optimizer is None:
                raise AdanoiseError(
                    "with a GradScaler, pass the optimizer (noise.before_step(optimizer)) so that its "
                    "gradients are unscaled before they are measured"
                )
            self._unscale(optimizer)
        touched = [i for i, t in enumerate(self._touched) if t]
        if not touched:
            raise AdanoiseError(
                "before_step() found no gradient: call it after loss.backward() and before optimizer.step()"
            )
        self._touched = [False] * len(self.params)
        step = self.step
        self.step += 1
        self._steps_in_epoch += 1
        norm = self._grad_norm(touched)
        scaled = self.scaler is not None and self.scaler.is_enabled()
        if (scaled or self.skip_non_finite) and not bool(torch.isfinite(norm)):
            self._skipped_in_epoch += 1
            return False
        self._pending_norms.append(norm)
        sigma = self.policy.grad_sigma(self.grad_sigma, step) if self.injects else 0.0
        if sigma > 0:
            with torch.no_grad():
                for i in touched:
                    grad = self.params[i].grad
                    grad.add_(self._draw(grad, sigma, _seed(self.seed, _GRADIENT, step, i)))
        return True

    def after_backward(self) -> bool:
        """`before_step()` for a loop with one backward per optimiser step and no scaler."""
        return self.before_step()

    def end_epoch(self, *, train_loss: float, val_loss: float) -> Decision:
        """Ends the epoch with its mean training loss and its validation loss; returns the
        scheduler's decision, which sets the noise of the next epoch. Under
        `torch.distributed` the losses are averaged over the ranks first. A refusal (a NaN
        loss, an epoch without a step) changes nothing: the epoch stays open, with what it
        measured, for a retry."""
        if not self._in_epoch or self._start is None:
            raise AdanoiseError("end_epoch() without start_epoch()")
        counted = self._steps_in_epoch - self._skipped_in_epoch
        if counted == 0:
            raise AdanoiseError(
                f"epoch {self.epoch} had no optimiser step with finite gradients: call before_step() before "
                "every optimizer.step(); the epoch stays open"
            )
        losses = []
        for name, value in (("train_loss", train_loss), ("val_loss", val_loss)):
            try:
                losses.append(float(value))
            except (TypeError, ValueError):
                raise AdanoiseError(
                    f"{name} must be a number (got {type(value).__name__}): pass the epoch's loss; the epoch stays open"
                ) from None
        grad_norm = self._norm_sum() / counted
        weight_update = self._weight_update()
        observed = [*losses, grad_norm, weight_update]
        if _distributed():
            observed = self._averaged(observed)
        try:
            decision = self.scheduler.observe(
                epoch=self.epoch,
                train_loss=observed[0],
                val_loss=observed[1],
                grad_norm=observed[2],
                weight_update=observed[3],
            )
        except AdanoiseError as e:
            raise AdanoiseError(
                f"{e}; nothing was recorded and the epoch stays open: call end_epoch() again with finite "
                "losses (a gradient norm or weight update that is not finite means the run diverged)"
            ) from None
        # The scheduler took the epoch: only now is anything changed.
        self.last_applied = self._applied()
        self.last_decision = decision
        self.grad_sigma = decision.grad_sigma
        self.weight_sigma = decision.weight_sigma
        self.last_grad_norm = observed[2]
        self.last_weight_update = observed[3]
        self._in_epoch = False
        self._reset_epoch()
        return decision

    def _applied(self) -> dict[str, Any]:
        """What the epoch in progress received, as a run's `noise_applied` records it: the
        gradient sigma of its first step (and of its last, where the policy changes it), the
        weight sigma of its start."""
        on = self.injects
        first = self.step - self._steps_in_epoch
        grad = self.policy.grad_sigma(self.grad_sigma, first) if on else 0.0
        end = self.policy.grad_sigma(self.grad_sigma, self.step - 1) if on else 0.0
        weight = self.policy.weight_sigma(self.weight_sigma) if on else 0.0
        out: dict[str, Any] = {"grad_sigma": grad, "weight_sigma": weight}
        if end != grad:
            out["grad_sigma_end"] = end
        if weight > 0:
            out["weight_scale"] = self.policy.weight_noise_scale
        return out

    # -- measurements ----------------------------------------------------------------------

    def _unscale(self, optimizer: torch.optim.Optimizer) -> None:
        try:
            self.scaler.unscale_(optimizer)
        except RuntimeError as e:
            # The loop unscaled already (to clip gradients, say): nothing left to do.
            if "unscale_() has already been called" not in str(e):
                raise

    def _grad_norm(self, touched: list[int]) -> torch.Tensor:
        """The global L2 norm of the touched gradients, in float32 (every device has it), each
        device's part summed there and the parts on the first parameter's device."""
        home = self._home
        parts: dict[torch.device, torch.Tensor] = {}
        for i in touched:
            grad = self.params[i].grad.detach()
            square = grad.float().square().sum()
            parts[grad.device] = parts[grad.device] + square if grad.device in parts else square
        total = sum((s.to(home) for s in parts.values()), torch.zeros((), device=home))
        return total.sqrt()

    def _norm_sum(self) -> float:
        """The sum of the epoch's step norms, kept on the device until now (one read per
        epoch). Reads them without consuming them."""
        total = 0.0 if self._norm_offset is None else self._norm_offset
        if self._pending_norms:
            total += float(torch.stack(self._pending_norms).sum())
        return total

    def _weight_update(self) -> float:
        diff = 0.0
        base = 0.0
        with torch.no_grad():
            for p, s in zip(self.params, self._start):
                diff += float((p.detach().float() - s.float()).square().sum())
                base += float(s.float().square().sum())
        return math.inf if base == 0 else math.sqrt(diff / base)

    def _averaged(self, values: list[float]) -> list[float]:
        device = self.params[0].device
        if torch.distributed.get_backend() == "gloo":
            device = torch.device("cpu")
        t = torch.tensor(values, dtype=torch.float64 if device.type != "mps" else torch.float32, device=device)
        torch.distributed.all_reduce(t)
        return (t / torch.distributed.get_world_size()).tolist()

    def _draw(self, like: torch.Tensor, sigma: float, seed: int) -> torch.Tensor:
        gen = torch.Generator(device=like.device)
        gen.manual_seed(seed)
        if self.noise == "gaussian":
            z = torch.randn(like.shape, generator=gen, device=like.device, dtype=like.dtype)
            return z * sigma
        a = 3.0**0.5 * sigma
        u = torch.rand(like.shape, generator=gen, device=like.device, dtype=like.dtype)
        return (u * 2.0 - 1.0) * a

    # -- state -----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue, at an epoch's end or in its middle (then with the
        weights of the epoch's start, as tensors, and its step norms: save it with
        `torch.save`). At an epoch's end it holds plain values only (JSON-serialisable).
        Saving changes nothing in the object, and the state is a copy: editing it leaves the
        object alone."""
        state: dict[str, Any] = {
            "version": _VERSION,
            "scheduler": self.scheduler.state_dict(),
            "settings": copy.deepcopy(self.settings),
            "epoch": self.epoch,
            "step": self.step,
            "grad_sigma": self.grad_sigma,
            "weight_sigma": self.weight_sigma,
            "last_decision": None if self.last_decision is None else self.last_decision.to_dict(),
            "in_epoch": None,
        }
        if self._in_epoch:
            in_epoch: dict[str, Any] = {
                "steps": self._steps_in_epoch,
                "skipped": self._skipped_in_epoch,
                "start": [s.detach().cpu().clone() for s in self._start],
            }
            if self._norm_offset is None:
                norms = self._pending_norms
                in_epoch["norms"] = torch.stack(norms).tolist() if norms else []
            else:
                # An epoch resumed from a version-2 state goes on in its format: a sum.
                state["version"] = 2
                in_epoch["norm_sum"] = self._norm_sum()
            state["in_epoch"] = in_epoch
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continues from `state_dict()`: the same decisions and the same noise follow. The
        state must come from an AdaptiveNoise made with the same settings (noise, seed,
        policy, thresholds, epochs, parameter shapes): another is refused, naming what
        differs. A damaged state (a NaN or negative number, a count out of range, a field
        missing, a decision of another epoch, weights that do not fit) is refused too. The
        whole state is checked before anything is taken: a refused one changes nothing."""
        loaded = _StateReader(self).read(state)
        # Everything checked: take it over.
        self.scheduler = loaded["scheduler"]
        self.epoch, self.step = loaded["epoch"], loaded["step"]
        self.grad_sigma, self.weight_sigma = loaded["grad_sigma"], loaded["weight_sigma"]
        self.last_decision = loaded["decision"]
        # What end_epoch() measured last belongs to the object's past, not to the state.
        self.last_grad_norm = self.last_weight_update = self.last_applied = None
        self._reset_epoch()
        self._in_epoch = loaded["in_epoch"] is not None
        if loaded["in_epoch"] is not None:
            in_epoch = loaded["in_epoch"]
            self._pending_norms = in_epoch["norms"]
            self._norm_offset = in_epoch["norm_offset"]
            self._steps_in_epoch = in_epoch["steps"]
            self._skipped_in_epoch = in_epoch["skipped"]
            self._start = in_epoch["start"]


def _flat(settings: Any, prefix: str = "") -> dict[str, Any]:
    """{"policy": {"seed": 1}} -> {"policy.seed": 1}, so that differences name the leaf."""
    if not isinstance(settings, dict):
        return {prefix: settings}
    out: dict[str, Any] = {}
    for key, value in settings.items():
        out.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _same(a: Any, b: Any) -> bool:
    """Equal, with a bool never equal to a number."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


_DAMAGED = "the state is damaged or was edited: load the state_dict() the run saved, unchanged"


class _StateReader:
    """Checks a whole AdaptiveNoise state against the object that is to load it, and builds
    what the object takes over, without touching the object."""

    def __init__(self, noise: AdaptiveNoise) -> None:
        self.noise = noise

    def read(self, state: Any) -> dict[str, Any]:
        if not isinstance(state, dict):
            raise AdanoiseError(
                f"the state is a {type(state).__name__}, not an AdaptiveNoise.state_dict(): pass the dict it returned"
            )
        version = state.get("version")
        if isinstance(version, bool) or version not in _IN_EPOCH_KEYS:
            raise AdanoiseError(
                f"the state is not an AdaptiveNoise.state_dict() of a version this one reads (version {version!r}; "
                f"this one reads {' and '.join(map(str, sorted(_IN_EPOCH_KEYS)))}): save it with this adanoise, or "
                "load it with the adanoise that saved it"
            )
        missing, unknown = sorted(_STATE_KEYS - set(state)), sorted(set(state) - _STATE_KEYS, key=str)
        if missing or unknown:
            parts = ([f"lacks {', '.join(missing)}"] if missing else []) + (
                [f"has unknown keys {', '.join(map(repr, unknown))}"] if unknown else []
            )
            raise AdanoiseError(
                f"the state {' and '.join(parts)}: it is not an AdaptiveNoise.state_dict() of this version; "
                "load the state_dict() the run saved, unchanged"
            )
        self._settings(state["settings"])
        scheduler = self._scheduler(state["scheduler"])
        epoch, step = self._count("epoch", state["epoch"]), self._count("step", state["step"])
        in_epoch = state["in_epoch"]
        if in_epoch is not None and not isinstance(in_epoch, dict):
            raise AdanoiseError(
                f"the state's in_epoch is a {type(in_epoch).__name__}, neither None nor a dict: {_DAMAGED}"
            )
        if epoch != scheduler.observed + (in_epoch is not None):
            raise AdanoiseError(
                f"the state's epoch ({epoch}) does not follow its scheduler's ({scheduler.observed} epochs "
                f"observed{', and an epoch in progress' if in_epoch is not None else ''}): {_DAMAGED}"
            )
        if epoch > scheduler.epochs:
            raise AdanoiseError(
                f"the state's epoch {epoch} is past its schedule's {scheduler.epochs} epochs: {_DAMAGED}"
            )
        decision = self._decision(state["last_decision"], scheduler)
        sigmas = {}
        for name in ("grad_sigma", "weight_sigma"):
            value = state[name]
            if not _real(value) or not math.isfinite(value) or value < 0:
                raise AdanoiseError(f"the state's {name} must be a finite number >= 0 (got {value!r}): {_DAMAGED}")
            decided = 0.0 if decision is None else getattr(decision, name)
            if value != decided:
                raise AdanoiseError(
                    f"the state's {name} ({value!r}) is not the one its last decision set ({decided!r}): {_DAMAGED}"
                )
            sigmas[name] = float(value)
        return {
            "scheduler": scheduler,
            "epoch": epoch,
            "step": step,
            **sigmas,
            "decision": decision,
            "in_epoch": None if in_epoch is None else self._in_epoch(in_epoch, state["version"], step),
        }

    def _settings(self, theirs: Any) -> None:
        ours = self.noise.settings
        if not isinstance(theirs, dict):
            raise AdanoiseError(f"the state's settings are a {type(theirs).__name__}, not a dict: {_DAMAGED}")
        theirs = copy.deepcopy(theirs)
        policy = theirs.get("policy")
        if isinstance(policy, dict) and "weight_noise_scale" not in policy:
            # Saved before the reading was recorded, when absolute was the only one.
            policy["weight_noise_scale"] = _UNRECORDED_WEIGHT_NOISE_SCALE
        a, b = _flat(theirs), _flat(ours)
        differ = [k for k in sorted(set(a) | set(b)) if k not in a or k not in b or not _same(a[k], b[k])]
        if differ:
            show = lambda d, k: repr(d[k]) if k in d else "(unset)"  # noqa: E731
            raise AdanoiseError(
                "the state was saved by an AdaptiveNoise with other settings ("
                + ", ".join(f"{k}: {show(a, k)} there, {show(b, k)} here" for k in differ)
                + "): make this one with the same settings"
            )

    def _scheduler(self, saved: Any) -> NoiseScheduler:
        ours = self.noise.settings
        scheduler = NoiseScheduler(ours["epochs"], **ours["thresholds"])
        try:
            scheduler.load_state_dict(saved)
        except (TypeError, ValueError) as e:  # AdanoiseError is a ValueError
            raise AdanoiseError(f"the state's scheduler is refused ({e}): {_DAMAGED}") from None
        return scheduler

    @staticmethod
    def _count(name: str, value: Any) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= _LARGEST:
            raise AdanoiseError(
                f"the state's {name} must be a whole number from 0 to 2**63 - 1 (got {value!r}): {_DAMAGED}"
            )
        return value

    def _decision(self, last: Any, scheduler: NoiseScheduler) -> Decision | None:
        observed = scheduler.observed
        if last is None:
            if observed:
                raise AdanoiseError(
                    f"the state's scheduler observed {observed} epochs but it holds no last decision: {_DAMAGED}"
                )
            return None
        try:
            decision = Decision.from_dict(last)
        except (TypeError, ValueError) as e:
            raise AdanoiseError(f"the state's last decision is refused ({e}): {_DAMAGED}") from None
        if decision.epoch != observed:
            raise AdanoiseError(
                f"the state's last decision is epoch {decision.epoch}'s, but its scheduler's last epoch is "
                f"{observed}: {_DAMAGED}"
            )
        largest = self.noise.settings["thresholds"]["sigma_max"]
        for name in ("grad_sigma", "weight_sigma"):
            value = getattr(decision, name)
            # The scheduler's sigmas never exceed sigma_max (up to the rounding of its formula).
            if value > largest * (1 + 1e-9):
                raise AdanoiseError(
                    f"the state's last decision has {name} {value!r}, above sigma_max {largest!r}: {_DAMAGED}"
                )
        return decision

    def _in_epoch(self, in_epoch: dict[str, Any], version: int, step: int) -> dict[str, Any]:
        keys = _IN_EPOCH_KEYS[version]
        missing, unknown = sorted(keys - set(in_epoch)), sorted(set(in_epoch) - keys, key=str)
        if missing or unknown:
            parts = ([f"lacks {', '.join(missing)}"] if missing else []) + (
                [f"has unknown keys {', '.join(map(repr, unknown))}"] if unknown else []
            )
            raise AdanoiseError(f"the state's in_epoch {' and '.join(parts)}: {_DAMAGED}")
        steps = self._count("in_epoch steps", in_epoch["steps"])
        skipped = self._count("in_epoch skipped", in_epoch["skipped"])
        if steps > step:
            raise AdanoiseError(f"the state's in_epoch steps ({steps}) exceed the run's steps ({step}): {_DAMAGED}")
        if skipped > steps:
            raise AdanoiseError(
                f"the state's in_epoch skipped steps ({skipped}) exceed its steps ({steps}): {_DAMAGED}"
            )
        counted = steps - skipped
        home = self.noise._home
        offset = None
        norms: list[torch.Tensor] = []
        if version == 2:
            offset = in_epoch["norm_sum"]
            if not _real(offset) or not 0 <= offset <= _FLOAT32_MAX * max(counted, 1) or (counted == 0 and offset):
                raise AdanoiseError(
                    f"the state's in_epoch norm_sum must be a finite number >= 0, and 0 without steps "
                    f"(got {offset!r} over {counted} steps): {_DAMAGED}"
                )
            offset = float(offset)
        else:
            values = in_epoch["norms"]
            if not isinstance(values, (list, tuple)) or len(values) != counted:
                got = f"{len(values)} norms" if isinstance(values, (list, tuple)) else type(values).__name__
                raise AdanoiseError(
                    f"the state's in_epoch norms must be a list of one norm per counted step ({counted}), "
                    f"got {got}: {_DAMAGED}"
                )
            bad = [v for v in values if not _real(v) or not 0 <= v <= _FLOAT32_MAX]
            if bad:
                raise AdanoiseError(
                    f"the state's in_epoch norms must be finite float32 numbers >= 0 (got {bad[0]!r}): {_DAMAGED}"
                )
            if values:
                norms = list(torch.tensor([float(v) for v in values], dtype=torch.float32, device=home).unbind(0))
        start = in_epoch["start"]
        params = self.noise.params
        if not isinstance(start, (list, tuple)) or len(start) != len(params):
            raise AdanoiseError(
                f"the state's epoch-start weights are not one tensor per parameter ({len(params)}): {_DAMAGED}"
            )
        taken = []
        for i, (s, p) in enumerate(zip(start, params)):
            if not isinstance(s, torch.Tensor) or s.shape != p.shape or s.dtype != p.dtype:
                got = f"{tuple(s.shape)} {s.dtype}" if isinstance(s, torch.Tensor) else type(s).__name__
                raise AdanoiseError(
                    f"the state's epoch-start weights of parameter {i} do not fit it ({got} there, "
                    f"{tuple(p.shape)} {p.dtype} here): {_DAMAGED}"
                )
            if not bool(torch.isfinite(s).all()):
                raise AdanoiseError(f"the state's epoch-start weights of parameter {i} are not finite: {_DAMAGED}")
            taken.append(s.detach().to(device=p.device, copy=True))
        return {"norms": norms, "norm_offset": offset, "steps": steps, "skipped": skipped, "start": taken}


def _real(value: Any) -> bool:
    """A real number that is not a bool, and finite."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
