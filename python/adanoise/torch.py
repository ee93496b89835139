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

import math
import time
from typing import Any, Iterable, Sequence

import torch

from ._adanoise import AdanoiseError, CosineRestarts, Decision, NoisePolicy, NoiseScheduler

__all__ = ["AdaptiveNoise", "CosineRestartsLR"]

_NOISE_KINDS = ("none", "gaussian", "uniform")
_GRADIENT, _WEIGHT = 5, 6
_MASK = (1 << 64) - 1
# What a state_dict() holds beside the scheduler's own state; a state with other keys is
# refused, so that a state of another version or object is never half-loaded.
_STATE_KEYS = {
    "version", "scheduler", "settings", "epoch", "step", "grad_sigma", "weight_sigma",
    "last_decision", "in_epoch",
}


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
        schedules = self._schedules
        super().load_state_dict({k: v for k, v in state_dict.items() if k != "_schedules"})
        self._schedules = schedules


class AdaptiveNoise:
    """Adaptive noise injection around a PyTorch training loop (see the module's docs).

    `params`: the parameters the optimiser trains (`model.parameters()` or
    `optimizer.param_groups`; those with `requires_grad` are used, and buffers such as
    BatchNorm statistics never get noise). `epochs`: `E_max` of the noise damping.
    `noise`: "gaussian", "uniform", or "none" (decide and record only, the baseline).
    `seed`: makes the noise reproducible, whatever the interruptions (under
    `torch.distributed`, rank 0's seed is used on every rank). `policy`: "adaptive" (the
    scheduler's decisions), "constant" (gradient noise of `noise_sigma` at every step) or
    "annealed" (`sigma_t^2 = anneal_eta / (1 + t)^anneal_gamma`). `weight_noise_scale`:
    "absolute", "relative" or "none", as the command's `--weight-noise-scale`. `scaler`:
    a `torch.amp.GradScaler`, for f16 mixed precision (`before_step` unscales with it).
    `skip_non_finite`: for a loop that unscales by itself and whose optimiser step skips
    non-finite gradients (a framework's mixed-precision plugin): such a step is then
    skipped here too. Other keywords are the scheduler's thresholds
    (`adanoise.NoiseScheduler`).
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
        weight_noise_scale: str = "absolute",
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
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise AdanoiseError(f"seed must be a whole number >= 0 (got {seed!r})")
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
        self._norm_sum = 0.0
        self._pending_norms: list[torch.Tensor] = []
        self._steps_in_epoch = 0
        self._skipped_in_epoch = 0
        self._start: list[torch.Tensor] | None = None

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
        self.epoch += 1
        self._in_epoch = True
        self._reset_epoch()
        self._start = [p.detach().clone() for p in self.params]
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
        `torch.distributed` the losses are averaged over the ranks first."""
        if not self._in_epoch or self._start is None:
            raise AdanoiseError("end_epoch() without start_epoch()")
        counted = self._steps_in_epoch - self._skipped_in_epoch
        if counted == 0:
            raise AdanoiseError(
                f"epoch {self.epoch} had no optimiser step with finite gradients: call before_step() before "
                "every optimizer.step(); the epoch stays open"
            )
        grad_norm = (self._norm_sum + self._flush_norms()) / counted
        weight_update = self._weight_update()
        observed = [float(train_loss), float(val_loss), grad_norm, weight_update]
        if _distributed():
            observed = self._averaged(observed)
        decision = self.scheduler.observe(
            epoch=self.epoch,
            train_loss=observed[0],
            val_loss=observed[1],
            grad_norm=observed[2],
            weight_update=observed[3],
        )
        self.last_applied = self._applied()
        self.last_decision = decision
        self.grad_sigma = decision.grad_sigma
        self.weight_sigma = decision.weight_sigma
        self.last_grad_norm = observed[2]
        self.last_weight_update = observed[3]
        self._in_epoch = False
        self._start = None
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
        home = self.params[touched[0]].grad.device
        parts: dict[torch.device, torch.Tensor] = {}
        for i in touched:
            grad = self.params[i].grad.detach()
            square = grad.float().square().sum()
            parts[grad.device] = parts[grad.device] + square if grad.device in parts else square
        total = sum((s.to(home) for s in parts.values()), torch.zeros((), device=home))
        return total.sqrt()

    def _flush_norms(self) -> float:
        """Adds the steps' norms, kept on their devices until now (one read per epoch)."""
        if not self._pending_norms:
            return 0.0
        home = self._pending_norms[0].device
        total = float(torch.stack([n.to(home) for n in self._pending_norms]).sum())
        self._pending_norms = []
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
        weights of the epoch's start and its running sums, as tensors: save it with
        `torch.save`). At an epoch's end it holds plain values only (JSON-serialisable)."""
        state: dict[str, Any] = {
            "version": 2,
            "scheduler": self.scheduler.state_dict(),
            "settings": self.settings,
            "epoch": self.epoch,
            "step": self.step,
            "grad_sigma": self.grad_sigma,
            "weight_sigma": self.weight_sigma,
            "last_decision": None if self.last_decision is None else self.last_decision.to_dict(),
            "in_epoch": None,
        }
        if self._in_epoch:
            state["in_epoch"] = {
                "norm_sum": self._norm_sum + self._flush_norms(),
                "steps": self._steps_in_epoch,
                "skipped": self._skipped_in_epoch,
                "start": [s.detach().cpu() for s in self._start],
            }
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continues from `state_dict()`: the same decisions and the same noise follow. The
        state must come from an AdaptiveNoise made with the same settings (noise, seed,
        policy, thresholds, epochs, parameter shapes): another is refused, naming what
        differs, and nothing is changed."""
        if not isinstance(state, dict) or set(state) != _STATE_KEYS or state.get("version") != 2:
            raise AdanoiseError("the state is not an AdaptiveNoise.state_dict() of this version")
        theirs, ours = state["settings"], self.settings
        differ = [k for k in ours if theirs.get(k) != ours[k]]
        if differ:
            raise AdanoiseError(
                "the state was saved by an AdaptiveNoise with other settings ("
                + ", ".join(f"{k}: {theirs.get(k)!r} there, {ours[k]!r} here" for k in differ)
                + "): make this one with the same settings"
            )
        scheduler = NoiseScheduler(ours["epochs"], **ours["thresholds"])
        scheduler.load_state_dict(state["scheduler"])
        counts = {k: state[k] for k in ("epoch", "step")}
        for name, value in counts.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise AdanoiseError(f"the state's {name} must be a whole number >= 0 (got {value!r})")
        if counts["epoch"] != scheduler.observed + (state["in_epoch"] is not None):
            raise AdanoiseError(
                f"the state's epoch ({counts['epoch']}) does not follow its scheduler's "
                f"({scheduler.observed} epochs observed)"
            )
        sigmas = {k: state[k] for k in ("grad_sigma", "weight_sigma")}
        for name, value in sigmas.items():
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise AdanoiseError(f"the state's {name} must be a finite number >= 0 (got {value!r})")
        last = state["last_decision"]
        decision = None if last is None else Decision.from_dict(last)
        in_epoch = state["in_epoch"]
        start = None
        if in_epoch is not None:
            start = [t.to(device=p.device, dtype=p.dtype) for t, p in zip(in_epoch["start"], self.params)]
            if len(start) != len(self.params) or any(s.shape != p.shape for s, p in zip(start, self.params)):
                raise AdanoiseError("the state's epoch-start weights do not fit these parameters")
        # Everything checked: take it over.
        self.scheduler = scheduler
        self.epoch, self.step = counts["epoch"], counts["step"]
        self.grad_sigma, self.weight_sigma = float(sigmas["grad_sigma"]), float(sigmas["weight_sigma"])
        self.last_decision = decision
        self._reset_epoch()
        self._in_epoch = in_epoch is not None
        if in_epoch is not None:
            self._norm_sum = float(in_epoch["norm_sum"])
            self._steps_in_epoch = int(in_epoch["steps"])
            self._skipped_in_epoch = int(in_epoch["skipped"])
            self._start = start
