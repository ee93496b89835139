"""adanoise in a PyTorch training loop.

- `CosineRestartsLR`: the study's learning-rate schedule as a PyTorch
  `LRScheduler`, stepped after every optimiser step; each parameter group
  follows it scaled to its own base rate.
- `AdaptiveNoise`: measures what the noise scheduler observes (the global
  gradient norm of every optimiser step, the relative weight update of every
  epoch), asks the scheduler after each epoch, and injects the noise of its
  policy: gradient noise at every optimiser step (after the gradients are
  complete and unscaled, before `optimizer.step()`, so before weight decay and
  momentum), weight noise (or shrink and perturb) at an epoch's start, weight
  noise after an optimiser step's update (anti-PGD, perturbed gradient descent,
  Langevin dynamics), or the labels a step trains on (label noise).

    model, optimizer = ..., torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    lr = CosineRestartsLR(optimizer, epochs=300, steps_per_epoch=len(loader))
    noise = AdaptiveNoise(model.parameters(), epochs=300, noise="gaussian", seed=0, optimizer=optimizer)
    for epoch in range(1, 301):
        noise.start_epoch()
        for x, y in loader:
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            noise.before_step()
            optimizer.step()            # the optimizer's post-step hook calls noise.after_step()
            lr.step()
        decision = noise.end_epoch(train_loss=..., val_loss=...)

The policies that act after the update need `after_step()` once the optimiser
has stepped: given the optimiser (`optimizer=` here, or `before_step(optimizer)`),
the adapter registers it as the optimiser's post-step hook; without it, call
`noise.after_step()` after `optimizer.step()` yourself. A step left without it is
refused at the next `before_step()` or `end_epoch()`. With mixed precision, pass
the `GradScaler` (`AdaptiveNoise(..., scaler=scaler)`) and the optimiser: the
gradients are unscaled first, and a step the scaler skips (gradients not
finite) is skipped here too. With gradient accumulation, call `before_step`
once per optimiser step. Under `torch.distributed` (DDP), every rank decides
from the losses averaged over the ranks and draws the same noise, so replicas
stay identical.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Iterable, Sequence

import torch

from ._adanoise import AdanoiseError, CosineRestarts, Decision, NoisePolicy, NoiseScheduler, defaults_dict

__all__ = ["AdaptiveNoise", "CosineRestartsLR"]

_NOISE_KINDS = ("none", "gaussian", "uniform")
# The purposes of the draws, each its own stream (the numbers the command gives them).
_GRADIENT, _WEIGHT = 5, 6
_ANTI_PGD, _LANGEVIN, _PERTURBATION, _LABEL_NOISE, _SHRINK_PERTURB = 8, 9, 10, 11, 12
_MASK = (1 << 64) - 1
# Seeds and counts a run's config.toml and metrics.jsonl can hold: TOML integers are signed
# 64-bit.
_LARGEST = (1 << 63) - 1
_FLOAT32_MAX = 3.4028234663852886e38
# The policies' parameters, keyed as NoisePolicy's keywords and a run's config.
_POLICY_PARAMETERS = (
    "noise_sigma", "anneal_eta", "anneal_gamma", "anti_pgd_sigma", "perturb_threshold",
    "perturb_interval", "perturb_radius", "langevin_temperature", "label_noise", "shrink_every",
    "shrink_factor", "shrink_sigma",
)
# What a state_dict() holds beside the scheduler's own state, by version; a state with other
# keys is refused, so that a state of another version or object is never half-loaded.
_STATE_KEYS_2 = {
    "version", "scheduler", "settings", "epoch", "step", "grad_sigma", "weight_sigma",
    "last_decision", "in_epoch",
}
_STATE_KEYS = {2: _STATE_KEYS_2, 3: _STATE_KEYS_2, 4: _STATE_KEYS_2 | {"last_perturbation"}}
# Version 4 adds what the policies acting after a step or on labels keep: perturbed gradient
# descent's last perturbation and the epoch's perturbations, the learning rates of the
# epoch's first and last steps (Langevin dynamics' record), and the label draws of the step
# in progress. Version 3 keeps the epoch's gradient norms one by one, so that a resumed epoch
# sums exactly what an uninterrupted one sums; version 2 kept their sum.
_VERSION = 4
_IN_EPOCH_KEYS = {
    4: {"norms", "steps", "skipped", "start", "perturbed", "lrs", "label_draws"},
    3: {"norms", "steps", "skipped", "start"},
    2: {"norm_sum", "steps", "skipped", "start"},
}
# How a state saved before the weight-noise reading was recorded reads weight noise.
_UNRECORDED_WEIGHT_NOISE_SCALE = "absolute"
# The policies that act on the weights after an optimiser step's update.
_AFTER_STEP_POLICIES = ("anti-pgd", "perturbed", "langevin")


def _splitmix(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def _seed(seed: int, purpose: int, *parts: int) -> int:
    """A generator seed for one draw, from the run seed, the purpose (gradient noise, weight
    noise, anti-PGD, ...) and the parts that tell its draws apart (the step or epoch, the
    parameter's position, ...)."""
    x = _splitmix(seed & _MASK)
    for part in (purpose, *parts):
        x = _splitmix(x ^ (part & _MASK))
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
    BatchNorm statistics never get noise). `epochs`: `E_max` of the noise damping, and the
    run's length for the policies that need it (shrink and perturb).
    `noise`: "gaussian", "uniform", or "none" (decide and record only, the baseline).
    `seed`: a whole number from 0 to 2**63 - 1 (what a run's config.toml can record); makes
    the noise reproducible, whatever the interruptions (under `torch.distributed`, rank 0's
    seed is used on every rank).

    `policy`, as the command's `--noise-policy`:

    - "adaptive" (the scheduler's decisions);
    - "constant": gradient noise of `noise_sigma` at every step;
    - "annealed": gradient noise with `sigma_t^2 = anneal_eta / (1 + t)^anneal_gamma`;
    - "anti-pgd": after every optimiser step n, `w += xi_{n+1} - xi_n`, each `xi` of
      standard deviation `anti_pgd_sigma` per element (also after a step the scaler skips,
      so that the draws keep telescoping);
    - "perturbed": after a step whose gradient norm (before noise) is at most
      `perturb_threshold`, at least `perturb_interval` steps after the last perturbation,
      one vector of radius `perturb_radius` over all weights together (uniform in the ball
      with noise "uniform", `N(0, radius^2 / d)` per element with "gaussian");
    - "langevin": after every step, noise of variance `2 lr_t langevin_temperature` per
      element, `lr_t` the step's learning rate of the parameter's group (the optimiser is
      needed: `optimizer=`, or `before_step(optimizer)`);
    - "label-noise": each training label replaced with probability `label_noise` by a class
      drawn uniformly (noise "uniform"): train on `noisy_labels(targets, classes)`;
    - "shrink-perturb": at the start of epochs `k + 1, 2k + 1, ...` (`k = shrink_every`),
      `w <- shrink_factor * w + noise`, of standard deviation `shrink_sigma` per element.

    A policy parameter left out takes core's default (`adanoise.defaults()`).
    `weight_noise_scale`: how the adaptive weight noise is read: "relative" (the default:
    sigma times each tensor's root mean square), "absolute" (sigma per element, the study's
    text read literally) or "none", as the command's `--weight-noise-scale`.

    `optimizer`: the torch optimiser that steps `params`: `after_step()` is registered as its
    post-step hook (a policy acting after the update then needs no call of yours), and its
    groups' learning rates are read for Langevin dynamics. `scaler`: a
    `torch.amp.GradScaler`, for f16 mixed precision (`before_step` unscales with it).
    `skip_non_finite`: for a loop that unscales by itself and whose optimiser step skips
    non-finite gradients (a framework's mixed-precision plugin): such a step is then skipped
    here too. Other keywords are the scheduler's thresholds (`adanoise.NoiseScheduler`).
    """

    def __init__(
        self,
        params: Iterable[Any],
        epochs: int,
        noise: str = "gaussian",
        seed: int = 0,
        *,
        policy: str = "adaptive",
        noise_sigma: float | None = None,
        anneal_eta: float | None = None,
        anneal_gamma: float | None = None,
        weight_noise_scale: str = "relative",
        anti_pgd_sigma: float | None = None,
        perturb_threshold: float | None = None,
        perturb_interval: int | None = None,
        perturb_radius: float | None = None,
        langevin_temperature: float | None = None,
        label_noise: float | None = None,
        shrink_every: int | None = None,
        shrink_factor: float | None = None,
        shrink_sigma: float | None = None,
        optimizer: torch.optim.Optimizer | None = None,
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
        given = {
            "noise_sigma": noise_sigma, "anneal_eta": anneal_eta, "anneal_gamma": anneal_gamma,
            "anti_pgd_sigma": anti_pgd_sigma, "perturb_threshold": perturb_threshold,
            "perturb_interval": perturb_interval, "perturb_radius": perturb_radius,
            "langevin_temperature": langevin_temperature, "label_noise": label_noise,
            "shrink_every": shrink_every, "shrink_factor": shrink_factor, "shrink_sigma": shrink_sigma,
        }
        # Only what was given: every default has one home, core's.
        self.policy = NoisePolicy(
            policy,
            weight_noise_scale=weight_noise_scale,
            **{k: v for k, v in given.items() if v is not None},
        )
        self.scheduler = NoiseScheduler(epochs, **thresholds)
        self.policy.check_injects(noise, self.scheduler.epochs)
        if scaler is not None and not hasattr(scaler, "unscale_"):
            raise AdanoiseError(f"scaler must be a torch.amp.GradScaler, got {type(scaler).__name__}")
        self.scaler = scaler
        self.skip_non_finite = skip_non_finite
        self.noise = noise
        self.seed = self._shared_seed(seed)
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
        # Perturbed gradient descent: the global step of its last perturbation, over the run.
        self.last_perturbation: int | None = None
        self._in_epoch = False
        self._reset_epoch()
        self._touched = [False] * len(self.params)
        self._hooks = [
            p.register_post_accumulate_grad_hook(self._toucher(i)) for i, p in enumerate(self.params)
        ]
        self.optimizer: torch.optim.Optimizer | None = None
        self._step_hook: Any = None
        if optimizer is not None:
            self._attach(optimizer)

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

    def _attach(self, optimizer: torch.optim.Optimizer) -> None:
        """Takes `optimizer` as the one that steps the parameters: `after_step()` becomes its
        post-step hook (replacing the hook on an optimiser given before)."""
        if optimizer is self.optimizer:
            return
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise AdanoiseError(
                f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}: pass the "
                "optimiser that steps the parameters"
            )
        if self._step_hook is not None:
            self._step_hook.remove()
        self.optimizer = optimizer
        self._step_hook = optimizer.register_step_post_hook(self._stepped)

    def _stepped(self, _optimizer: torch.optim.Optimizer, _args: Any, _kwargs: Any) -> None:
        # The optimiser may step outside this object's epochs (a warm-up of the caller's):
        # then nothing awaits, and the hook does nothing.
        self._after_update()

    def _reset_epoch(self) -> None:
        # The epoch's running state. Only start_epoch(), a successful end_epoch() and
        # load_state_dict() replace it; saving it or a refused call leaves it as it is.
        self._pending_norms: list[torch.Tensor] = []
        # The sum of norms a version-2 state held without the norms themselves.
        self._norm_offset: float | None = None
        self._steps_in_epoch = 0
        self._skipped_in_epoch = 0
        self._start: list[torch.Tensor] | None = None
        # Perturbed gradient descent's steps of this epoch.
        self._perturbed: list[int] = []
        # The learning rate (of the first parameter's group) at the epoch's first and last
        # steps, for Langevin dynamics' record.
        self._lrs: list[float] | None = None
        # Label draws taken for the step in progress (noisy_labels() calls since its start).
        self._label_draws = 0
        # The step whose update awaits the policy's after-step action: (global step, its
        # gradient norm, each parameter's learning rate or None).
        self._awaiting: tuple[int, torch.Tensor, list[float] | None] | None = None

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
        """Takes this object's gradient hooks off the parameters, and its post-step hook off
        the optimiser: it sees no more gradients or steps (for an object replaced by another
        on the same parameters)."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        if self._step_hook is not None:
            self._step_hook.remove()
            self._step_hook = None
        self.optimizer = None

    # -- the epoch -------------------------------------------------------------------------

    @property
    def injects(self) -> bool:
        """Whether this run applies noise (False for noise "none")."""
        return self.noise != "none"

    @property
    def acts_after_step(self) -> bool:
        """Whether this run's policy acts on the weights after each optimiser step's update
        (anti-PGD, perturbed gradient descent, Langevin dynamics), so that `after_step()`
        must follow every `optimizer.step()`."""
        return self.injects and self.policy.policy in _AFTER_STEP_POLICIES

    def start_epoch(self) -> None:
        """Begins the next epoch: remembers the weights (for its weight update), then does
        what the policy does at an epoch's start, if anything: the adaptive weight noise in
        force, or shrink and perturb."""
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
        start = self.policy.epoch_start(self.epoch, self.weight_sigma) if self.injects else None
        if start is None:
            return
        shrink, sigma, scale = start
        shrinking = self.policy.policy == "shrink-perturb"
        purpose = _SHRINK_PERTURB if shrinking else _WEIGHT
        with torch.no_grad():
            for i, p in enumerate(self.params):
                noise = self._draw(p, sigma, _seed(self.seed, purpose, self.epoch, i)) if sigma > 0 else None
                if shrinking:
                    p.mul_(shrink)
                if noise is None:
                    continue
                if scale == "relative":
                    # sigma times the tensor's root mean square, just before the noise.
                    noise.mul_(p.detach().float().square().mean().sqrt().to(p.dtype))
                p.add_(noise)

    def before_step(self, optimizer: torch.optim.Optimizer | None = None) -> bool:
        """Call once per optimiser step, after the last `backward()` of the step and right
        before `optimizer.step()` (or `scaler.step(optimizer)`): with a scaler, unscales the
        gradients first (pass the optimizer); records the global gradient norm (before noise
        and weight decay) and adds this step's gradient noise. Returns False for a step the
        scaler will skip (gradients not finite): it is not counted in the epoch's norm and
        gets no noise (but anti-PGD's, which keeps its draws telescoping). An optimiser
        passed here is taken as `AdaptiveNoise(..., optimizer=)` is: `after_step()` becomes
        its post-step hook."""
        if not self._in_epoch:
            raise AdanoiseError("before_step() outside an epoch: call start_epoch() first")
        self._refuse_awaiting("before_step()")
        if self.injects and self.policy.label_noise() is not None and self._label_draws == 0:
            raise AdanoiseError(
                f"policy 'label-noise' trains on noisy labels, and optimiser step {self.step} drew none: "
                "train on y = noise.noisy_labels(y, classes) (before the loss of every step)"
            )
        if optimizer is not None:
            self._attach(optimizer)
        langevin = self.injects and self.policy.policy == "langevin"
        if langevin and self.optimizer is None:
            raise AdanoiseError(
                "policy 'langevin' scales each step's noise by its parameter group's learning rate, and "
                "this AdaptiveNoise has no optimiser: pass it (AdaptiveNoise(..., optimizer=opt), or "
                "noise.before_step(opt))"
            )
        lrs = self._learning_rates() if langevin else None
        if self.scaler is not None and self.scaler.is_enabled():
            if optimizer is None and self.optimizer is None:
                raise AdanoiseError(
                    "with a GradScaler, pass the optimizer (noise.before_step(optimizer)) so that its "
                    "gradients are unscaled before they are measured"
                )
            self._unscale(optimizer if optimizer is not None else self.optimizer)
        touched = [i for i, t in enumerate(self._touched) if t]
        if not touched:
            raise AdanoiseError(
                "before_step() found no gradient: call it after loss.backward() and before optimizer.step()"
            )
        self._touched = [False] * len(self.params)
        self._label_draws = 0
        step = self.step
        self.step += 1
        self._steps_in_epoch += 1
        if lrs is not None:
            self._lrs = [lrs[0], lrs[0]] if self._lrs is None else [self._lrs[0], lrs[0]]
        norm = self._grad_norm(touched)
        scaled = self.scaler is not None and self.scaler.is_enabled()
        if (scaled or self.skip_non_finite) and not bool(torch.isfinite(norm)):
            self._skipped_in_epoch += 1
            if self.injects and self.policy.policy == "anti-pgd":
                # The optimiser leaves the weights as they are, so the step's draws go in now.
                self._anticorrelated(step)
            return False
        self._pending_norms.append(norm)
        sigma = self.policy.grad_sigma(self.grad_sigma, step) if self.injects else 0.0
        if sigma > 0:
            with torch.no_grad():
                for i in touched:
                    grad = self.params[i].grad
                    grad.add_(self._draw(grad, sigma, _seed(self.seed, _GRADIENT, step, i)))
        if self.acts_after_step:
            self._awaiting = (step, norm, lrs)
        return True

    def after_backward(self) -> bool:
        """`before_step()` for a loop with one backward per optimiser step and no scaler."""
        return self.before_step()

    def after_step(self) -> bool:
        """Call once per optimiser step, right after `optimizer.step()` (or
        `scaler.step(optimizer)`), unless the optimiser was given (`AdaptiveNoise(...,
        optimizer=)` or `before_step(optimizer)`), whose post-step hook calls it: does what
        the policy does to the weights after the update (anti-PGD's `xi_{n+1} - xi_n`,
        perturbed gradient descent's perturbation where its rule fires, Langevin dynamics'
        noise). Returns whether it acted; a second call for the same step, a step the scaler
        skipped or a policy that does nothing after a step make it return False, changing
        nothing."""
        if not self._in_epoch:
            raise AdanoiseError(
                "after_step() outside an epoch: call it after the optimizer.step() of a step that "
                "before_step() began"
            )
        return self._after_update()

    def _refuse_awaiting(self, what: str) -> None:
        if self._awaiting is not None:
            raise AdanoiseError(
                f"optimiser step {self._awaiting[0]} was not followed by after_step(), so policy "
                f"{self.policy.policy!r} did not act on its update: call noise.after_step() right after "
                "every optimizer.step() (or give the optimiser, AdaptiveNoise(..., optimizer=opt), whose "
                f"post-step hook calls it), then {what} again"
            )

    def _after_update(self) -> bool:
        if self._awaiting is None:
            return False
        step, norm, lrs = self._awaiting
        kind = self.policy.policy
        if kind == "anti-pgd":
            self._anticorrelated(step)
        elif kind == "langevin":
            with torch.no_grad():
                for i, p in enumerate(self.params):
                    sigma = self.policy.after_step(lrs[i])["sigma"]
                    if sigma > 0:
                        p.add_(self._draw(p, sigma, _seed(self.seed, _LANGEVIN, step, i)))
        elif kind == "perturbed" and self._perturb_fires(step, norm):
            self._perturb(step)
            self.last_perturbation = step
            self._perturbed.append(step)
        self._awaiting = None
        return True

    def _perturb_fires(self, step: int, norm: torch.Tensor) -> bool:
        """Core's rule for step `step`. The norm is read from the device (a wait for it)
        only at a step far enough from the last perturbation for the norm to matter."""
        last = self.last_perturbation
        if last is not None and step < last + self.policy.after_step(0.0)["interval"]:
            return False
        return self.policy.perturb_fires(step, float(norm), last)

    def _anticorrelated(self, step: int) -> None:
        """Anti-PGD after global step `step`: `w += xi_{step+1} - xi_step`, each draw from its
        own seed, so that nothing but the step count is kept."""
        sigma = self.policy.after_step(0.0)["sigma"]
        with torch.no_grad():
            for i, p in enumerate(self.params):
                following = self._draw(p, sigma, _seed(self.seed, _ANTI_PGD, step + 1, i))
                p.add_(following.sub_(self._draw(p, sigma, _seed(self.seed, _ANTI_PGD, step, i))))

    def _perturb(self, step: int) -> None:
        """Perturbed gradient descent's perturbation after global step `step`: one vector of
        the policy's radius over all parameters together."""
        radius = self.policy.after_step(0.0)["radius"]
        d = sum(p.numel() for p in self.params)
        seeds = [_seed(self.seed, _PERTURBATION, step, i) for i in range(len(self.params))]
        with torch.no_grad():
            if self.noise == "gaussian":
                sigma = radius / math.sqrt(d)
                for p, s in zip(self.params, seeds):
                    p.add_(self._draw(p, sigma, s))
                return
            # Uniform in the ball: a Gaussian direction, drawn once to measure its length and
            # again (the same draw) to add it, so that no copy of the weights is held.
            squares = [self._gaussian(p, s).float().square().sum().to(self._home) for p, s in zip(self.params, seeds)]
            square = float(torch.stack(squares).sum())
            if square == 0:
                return
            gen = torch.Generator().manual_seed(_seed(self.seed, _PERTURBATION, step, len(self.params)))
            u = 1.0 - float(torch.rand((), generator=gen, dtype=torch.float64))
            scale = radius * u ** (1.0 / d) / math.sqrt(square)
            for p, s in zip(self.params, seeds):
                p.add_(self._gaussian(p, s).mul_(scale))

    def _learning_rates(self) -> list[float]:
        """Each parameter's learning rate now, its group's in the optimiser."""
        rates = {id(p): g["lr"] for g in self.optimizer.param_groups for p in g["params"]}
        out = []
        for i, p in enumerate(self.params):
            if id(p) not in rates:
                raise AdanoiseError(
                    f"parameter {i} (shape {list(p.shape)}) is in none of the optimiser's parameter groups, "
                    "and policy 'langevin' scales its noise by its group's learning rate: give AdaptiveNoise "
                    "the parameters this optimiser trains"
                )
            out.append(float(rates[id(p)]))
        return out

    def noisy_labels(self, targets: torch.Tensor, classes: int) -> torch.Tensor:
        """The labels to train the step in progress on, under policy "label-noise": each of
        `targets` (class indices, from 0 to `classes - 1`) replaced with probability
        `label_noise` by a class drawn uniformly from all `classes` (its own included, so
        that a fraction `label_noise * (classes - 1) / classes` changes). Negative labels
        (`ignore_index`) stay. Returns a new tensor: count accuracy (and the losses passed to
        `end_epoch`) against the true `targets`. The draws are seeded by the run seed, the
        global step, the call's rank in the step (with gradient accumulation, one call per
        micro-batch) and the process's rank, so that a resumed run draws what an
        uninterrupted one draws."""
        if not self._in_epoch:
            raise AdanoiseError("noisy_labels() outside an epoch: call start_epoch() first")
        p = self.policy.label_noise() if self.injects else None
        if p is None:
            raise AdanoiseError(
                f"noisy_labels() replaces labels under policy 'label-noise', and this AdaptiveNoise's policy is "
                f"{self.policy.policy!r}{' with noise none' if not self.injects else ''}: train on your own labels"
            )
        indices = (
            isinstance(targets, torch.Tensor)
            and not (targets.dtype.is_floating_point or targets.dtype.is_complex or targets.dtype == torch.bool)
        )
        if not indices:
            got = targets.dtype if isinstance(targets, torch.Tensor) else type(targets).__name__
            raise AdanoiseError(
                f"noisy_labels() takes class indices (an integer tensor, as F.cross_entropy's), got {got}: "
                "pass the batch's labels, not probabilities or one-hot targets"
            )
        if isinstance(classes, bool) or not isinstance(classes, int) or classes < 2:
            raise AdanoiseError(
                f"classes must be a whole number of at least 2 (got {classes!r}): pass the number of classes"
            )
        if targets.numel() and int(targets.max()) >= classes:
            raise AdanoiseError(
                f"a label is {int(targets.max())}, but classes is {classes}: pass the number of classes, so that "
                "replacements are drawn among all of them"
            )
        rank = torch.distributed.get_rank() if _distributed() else 0
        gen = torch.Generator(device=targets.device)
        gen.manual_seed(_seed(self.seed, _LABEL_NOISE, self.step, self._label_draws, rank))
        u = torch.rand(targets.shape, generator=gen, device=targets.device)
        drawn = torch.randint(0, classes, targets.shape, generator=gen, device=targets.device, dtype=targets.dtype)
        self._label_draws += 1
        return torch.where((u < p) & (targets >= 0), drawn, targets)

    def end_epoch(self, *, train_loss: float, val_loss: float) -> Decision:
        """Ends the epoch with its mean training loss and its validation loss; returns the
        scheduler's decision, which sets the noise of the next epoch. Under
        `torch.distributed` the losses are averaged over the ranks first. A refusal (a NaN
        loss, an epoch without a step, a step left without its `after_step()`) changes
        nothing: the epoch stays open, with what it measured, for a retry."""
        if not self._in_epoch or self._start is None:
            raise AdanoiseError("end_epoch() without start_epoch()")
        self._refuse_awaiting("end_epoch()")
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
        weight sigma of its start (with the shrink factor where it shrank), the sigma of the
        weight noise after each step (anti-PGD's; Langevin dynamics' at the first and last
        steps), perturbed gradient descent's steps and label noise's probability."""
        out: dict[str, Any] = {"grad_sigma": 0.0, "weight_sigma": 0.0}
        if not self.injects:
            return out
        first = self.step - self._steps_in_epoch
        grad = self.policy.grad_sigma(self.grad_sigma, first)
        end = self.policy.grad_sigma(self.grad_sigma, self.step - 1)
        start = self.policy.epoch_start(self.epoch, self.weight_sigma)
        weight = 0.0 if start is None else start[1]
        out = {"grad_sigma": grad, "weight_sigma": weight}
        if end != grad:
            out["grad_sigma_end"] = end
        if weight > 0:
            out["weight_scale"] = start[2]
        if start is not None and start[0] != 1.0:
            out["shrink"] = start[0]
        after = self.policy.after_step(0.0)["kind"]
        if after == "anticorrelated":
            out["step_weight_sigma"] = self.policy.after_step(0.0)["sigma"]
        elif after == "langevin" and self._lrs is not None:
            first_sigma, last_sigma = (self.policy.after_step(lr)["sigma"] for lr in self._lrs)
            out["step_weight_sigma"] = first_sigma
            if last_sigma != first_sigma:
                out["step_weight_sigma_end"] = last_sigma
        elif after == "perturbed":
            out["perturbed_steps"] = list(self._perturbed)
        p = self.policy.label_noise()
        if p is not None:
            out["label_noise"] = p
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

    @staticmethod
    def _gaussian(like: torch.Tensor, seed: int) -> torch.Tensor:
        """A standard Gaussian draw shaped as `like`, whatever the run's noise kind."""
        gen = torch.Generator(device=like.device)
        gen.manual_seed(seed)
        return torch.randn(like.shape, generator=gen, device=like.device, dtype=like.dtype)

    # -- state -----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue, at an epoch's end or in its middle (then with the
        weights of the epoch's start, as tensors, and its step norms: save it with
        `torch.save`). At an epoch's end it holds plain values only (JSON-serialisable).
        Saving changes nothing in the object, and the state is a copy: editing it leaves the
        object alone. A step between `before_step()` and its `after_step()` cannot be saved
        (its update is half done): save after `after_step()`."""
        if self._awaiting is not None:
            raise AdanoiseError(
                f"state_dict() between optimiser step {self._awaiting[0]}'s before_step() and after_step(): "
                f"policy {self.policy.policy!r} has not acted on its update yet; save the state after "
                "optimizer.step() and noise.after_step()"
            )
        state: dict[str, Any] = {
            "version": _VERSION,
            "scheduler": self.scheduler.state_dict(),
            "settings": copy.deepcopy(self.settings),
            "epoch": self.epoch,
            "step": self.step,
            "grad_sigma": self.grad_sigma,
            "weight_sigma": self.weight_sigma,
            "last_decision": None if self.last_decision is None else self.last_decision.to_dict(),
            "last_perturbation": self.last_perturbation,
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
                in_epoch["perturbed"] = list(self._perturbed)
                in_epoch["lrs"] = None if self._lrs is None else list(self._lrs)
                in_epoch["label_draws"] = self._label_draws
            else:
                # An epoch resumed from a version-2 state goes on in its format: a sum. Such a
                # state holds one of the gradient-noise policies, which keep nothing more.
                state["version"] = 2
                del state["last_perturbation"]
                in_epoch["norm_sum"] = self._norm_sum()
            state["in_epoch"] = in_epoch
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continues from `state_dict()`: the same decisions and the same noise follow. The
        state must come from an AdaptiveNoise made with the same settings (noise, seed,
        policy and its parameters, thresholds, epochs, parameter shapes): another is
        refused, naming what differs. A damaged state (a NaN or negative number, a count out
        of range, a field missing, a decision of another epoch, weights that do not fit, a
        perturbation its rule forbids) is refused too. The whole state is checked before
        anything is taken: a refused one changes nothing."""
        loaded = _StateReader(self).read(state)
        # Everything checked: take it over.
        self.scheduler = loaded["scheduler"]
        self.epoch, self.step = loaded["epoch"], loaded["step"]
        self.grad_sigma, self.weight_sigma = loaded["grad_sigma"], loaded["weight_sigma"]
        self.last_decision = loaded["decision"]
        self.last_perturbation = loaded["last_perturbation"]
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
            self._perturbed = in_epoch["perturbed"]
            self._lrs = in_epoch["lrs"]
            self._label_draws = in_epoch["label_draws"]


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
        keys = _STATE_KEYS[version]
        missing, unknown = sorted(keys - set(state)), sorted(set(state) - keys, key=str)
        if missing or unknown:
            parts = ([f"lacks {', '.join(missing)}"] if missing else []) + (
                [f"has unknown keys {', '.join(map(repr, unknown))}"] if unknown else []
            )
            raise AdanoiseError(
                f"the state {' and '.join(parts)}: it is not an AdaptiveNoise.state_dict() of this version; "
                "load the state_dict() the run saved, unchanged"
            )
        self._settings(state["settings"], version)
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
        last = self._last_perturbation(state.get("last_perturbation"), step)
        return {
            "scheduler": scheduler,
            "epoch": epoch,
            "step": step,
            **sigmas,
            "decision": decision,
            "last_perturbation": last,
            "in_epoch": None if in_epoch is None else self._in_epoch(in_epoch, state["version"], step, last),
        }

    def _settings(self, theirs: Any, version: int) -> None:
        ours = self.noise.settings
        if not isinstance(theirs, dict):
            raise AdanoiseError(f"the state's settings are a {type(theirs).__name__}, not a dict: {_DAMAGED}")
        theirs = copy.deepcopy(theirs)
        policy = theirs.get("policy")
        if isinstance(policy, dict) and "weight_noise_scale" not in policy:
            # Saved before the reading was recorded, when absolute was the only one.
            policy["weight_noise_scale"] = _UNRECORDED_WEIGHT_NOISE_SCALE
        if isinstance(policy, dict) and version < 4:
            # Saved before the policies acting on weights and labels existed: their
            # parameters were the defaults then, as the command reads an older config.
            defaults = defaults_dict()
            for key in _POLICY_PARAMETERS:
                policy.setdefault(key, defaults[key])
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

    def _last_perturbation(self, last: Any, step: int) -> int | None:
        if last is None:
            return None
        last = self._count("last_perturbation", last)
        if self.noise.policy.policy != "perturbed":
            raise AdanoiseError(
                f"the state's last_perturbation is step {last}, but its policy is "
                f"{self.noise.policy.policy!r}, which never perturbs: {_DAMAGED}"
            )
        if last >= step:
            raise AdanoiseError(
                f"the state's last_perturbation (step {last}) is not one of the run's {step} steps: {_DAMAGED}"
            )
        return last

    def _in_epoch(self, in_epoch: dict[str, Any], version: int, step: int, last: int | None) -> dict[str, Any]:
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
        extra = {"perturbed": [], "lrs": None, "label_draws": 0}
        if version >= 4:
            extra = {
                "perturbed": self._perturbed(in_epoch["perturbed"], step - steps, step, last),
                "lrs": self._lrs(in_epoch["lrs"], counted=steps),
                "label_draws": self._count("in_epoch label_draws", in_epoch["label_draws"]),
            }
        return {"norms": norms, "norm_offset": offset, "steps": steps, "skipped": skipped, "start": taken, **extra}

    def _perturbed(self, values: Any, first: int, end: int, last: int | None) -> list[int]:
        """The epoch's perturbation steps: steps of the epoch (from `first` to `end - 1`), as
        far apart as the rule asks, the last of them the run's last perturbation."""
        if not isinstance(values, (list, tuple)):
            raise AdanoiseError(
                f"the state's in_epoch perturbed is a {type(values).__name__}, not a list of steps: {_DAMAGED}"
            )
        steps = [self._count("in_epoch perturbed step", v) for v in values]
        if steps and self.noise.policy.policy != "perturbed":
            raise AdanoiseError(
                f"the state's in_epoch perturbed holds steps {steps}, but its policy is "
                f"{self.noise.policy.policy!r}, which never perturbs: {_DAMAGED}"
            )
        interval = self.noise.policy.after_step(0.0).get("interval", 0)
        outside = [s for s in steps if not first <= s < end]
        if outside:
            raise AdanoiseError(
                f"the state's in_epoch perturbed step {outside[0]} is not a step of the epoch (steps {first} "
                f"to {end - 1}): {_DAMAGED}"
            )
        if any(b < a + max(interval, 1) for a, b in zip(steps, steps[1:])):
            raise AdanoiseError(
                f"the state's in_epoch perturbed steps {steps} are not in order at least perturb_interval "
                f"({interval}) steps apart: {_DAMAGED}"
            )
        if last is not None and first <= last < end and last not in steps:
            raise AdanoiseError(
                f"the state's last_perturbation (step {last}) is a step of the epoch in progress, but not among "
                f"its perturbed steps {steps}: {_DAMAGED}"
            )
        if steps and steps[-1] != last:
            raise AdanoiseError(
                f"the state's in_epoch perturbed steps end at {steps[-1]}, but its last_perturbation is "
                f"{last!r}: {_DAMAGED}"
            )
        return steps

    def _lrs(self, values: Any, counted: int) -> list[float] | None:
        """The learning rates of the epoch's first and last steps, kept under Langevin
        dynamics once the epoch has a step."""
        langevin = self.noise.policy.policy == "langevin" and self.noise.injects
        if values is None:
            if langevin and counted:
                raise AdanoiseError(
                    f"the state's in_epoch lrs are missing, and policy 'langevin' records the learning rates "
                    f"of the epoch's {counted} steps: {_DAMAGED}"
                )
            return None
        if (
            not isinstance(values, (list, tuple))
            or len(values) != 2
            or not all(_real(v) and v >= 0 for v in values)
        ):
            raise AdanoiseError(
                f"the state's in_epoch lrs must be None or two finite learning rates >= 0 (got {values!r}): {_DAMAGED}"
            )
        return [float(v) for v in values]


def _real(value: Any) -> bool:
    """A real number that is not a bool, and finite."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
