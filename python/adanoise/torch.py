"""adanoise in a PyTorch training loop.

- `CosineRestartsLR`: the study's learning-rate schedule as a PyTorch
  `LRScheduler`, stepped after every optimiser step.
- `AdaptiveNoise`: measures what the noise scheduler observes (the global
  gradient norm of every step, the relative weight update of every epoch), asks
  the scheduler after each epoch, and injects its decision into the next epoch:
  gradient noise at every step (after `loss.backward()`, before
  `optimizer.step()`, so before weight decay and momentum) and weight noise once
  at the epoch's start, exactly as the `adanoise` command does.

    model, optimizer = ..., torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    lr = CosineRestartsLR(optimizer, epochs=300, steps_per_epoch=len(loader))
    noise = AdaptiveNoise(model.parameters(), epochs=300, noise="gaussian", seed=0)
    for epoch in range(1, 301):
        noise.start_epoch()
        for x, y in loader:
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            noise.after_backward()
            optimizer.step()
            lr.step()
        decision = noise.end_epoch(train_loss=..., val_loss=...)
"""

from __future__ import annotations

from typing import Any, Iterable

import torch

from ._adanoise import AdanoiseError, CosineRestarts, Decision, NoiseScheduler

__all__ = ["AdaptiveNoise", "CosineRestartsLR"]

_NOISE_KINDS = ("none", "gaussian", "uniform")
_WEIGHT_SCALES = ("absolute", "relative", "none")
_GRADIENT, _WEIGHT = 5, 6
_MASK = (1 << 64) - 1


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


class CosineRestartsLR(torch.optim.lr_scheduler.LRScheduler):
    """Cosine annealing with decaying restarts, stepped after every optimiser step.

    Each parameter group's initial learning rate is its `lr_max`; the other
    arguments are those of `adanoise.CosineRestarts` (defaults: the study's
    Table IV). Call `step()` after every `optimizer.step()`.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        epochs: int,
        steps_per_epoch: int,
        restart_epochs: int = 50,
        t_mult: float = 1.0,
        lr_final_max: float = 1e-5,
        lr_min: float = 1e-6,
        last_epoch: int = -1,
    ) -> None:
        self._shape = dict(
            epochs=epochs,
            steps_per_epoch=steps_per_epoch,
            restart_epochs=restart_epochs,
            t_mult=t_mult,
            lr_final_max=lr_final_max,
            lr_min=lr_min,
        )
        self._schedules: dict[float, CosineRestarts] = {}
        super().__init__(optimizer, last_epoch)

    def _schedule(self, lr_max: float) -> CosineRestarts:
        if lr_max not in self._schedules:
            self._schedules[lr_max] = CosineRestarts(lr_max, **self._shape)
        return self._schedules[lr_max]

    def get_lr(self) -> list[float]:
        step = max(self.last_epoch, 0)
        return [self._schedule(base).lr_at(step) for base in self.base_lrs]

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.pop("_schedules", None)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._schedules = {}


class AdaptiveNoise:
    """Adaptive noise injection around a PyTorch training loop (see the module's docs).

    `params`: the parameters the optimiser trains (those with `requires_grad`
    are used; buffers such as BatchNorm statistics never get noise).
    `epochs`: `E_max` of the noise damping. `noise`: "gaussian", "uniform", or
    "none" (decide and record only, the baseline). `seed`: makes the noise
    reproducible, whatever the interruptions. `weight_noise_scale`: how the
    decided weight sigma is applied: per element ("absolute", the command's
    default), times each tensor's root mean square ("relative"), or not at all
    ("none"; gradient noise stays). Other keywords are the scheduler's
    thresholds (`adanoise.NoiseScheduler`).
    """

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        epochs: int,
        noise: str = "gaussian",
        seed: int = 0,
        weight_noise_scale: str = "absolute",
        **thresholds: float,
    ) -> None:
        if noise not in _NOISE_KINDS:
            raise AdanoiseError(
                f"noise must be one of {', '.join(_NOISE_KINDS)} (got {noise!r})"
            )
        if weight_noise_scale not in _WEIGHT_SCALES:
            raise AdanoiseError(
                f"weight_noise_scale must be one of {', '.join(_WEIGHT_SCALES)} (got {weight_noise_scale!r})"
            )
        self.weight_noise_scale = weight_noise_scale
        self.params = [p for p in params if p.requires_grad]
        if not self.params:
            raise AdanoiseError(
                "no parameter requires a gradient: pass the parameters the optimiser trains"
            )
        self.noise = noise
        self.seed = seed
        self.scheduler = NoiseScheduler(epochs, **thresholds)
        self.epoch = 0
        self.step = 0
        self.grad_sigma = 0.0
        self.weight_sigma = 0.0
        self.last_decision: Decision | None = None
        self._in_epoch = False
        self._norm_sum: torch.Tensor | None = None
        self._steps_in_epoch = 0
        self._start: torch.Tensor | None = None

    def _flat(self) -> torch.Tensor:
        return torch.cat([p.detach().reshape(-1).to(torch.float64) for p in self.params])

    def _draw(self, like: torch.Tensor, sigma: float, seed: int) -> torch.Tensor:
        gen = torch.Generator(device=like.device)
        gen.manual_seed(seed)
        if self.noise == "gaussian":
            z = torch.randn(like.shape, generator=gen, device=like.device, dtype=like.dtype)
            return z * sigma
        a = 3.0**0.5 * sigma
        u = torch.rand(like.shape, generator=gen, device=like.device, dtype=like.dtype)
        return (u * 2.0 - 1.0) * a

    @property
    def injects(self) -> bool:
        """Whether this run applies noise (False for noise "none")."""
        return self.noise != "none"

    def start_epoch(self) -> None:
        """Begins the next epoch: remembers the weights (for its weight update), then adds
        the weight noise decided after the previous epoch, if any."""
        if self._in_epoch:
            raise AdanoiseError(
                f"epoch {self.epoch} was started and not ended: call end_epoch() first"
            )
        self.epoch += 1
        self._in_epoch = True
        self._norm_sum = None
        self._steps_in_epoch = 0
        self._start = self._flat()
        if self.injects and self.weight_sigma > 0 and self.weight_noise_scale != "none":
            with torch.no_grad():
                for i, p in enumerate(self.params):
                    seed = _seed(self.seed, _WEIGHT, self.epoch, i)
                    noise = self._draw(p, self.weight_sigma, seed)
                    if self.weight_noise_scale == "relative":
                        # sigma times the tensor's root mean square, just before the noise.
                        noise.mul_(p.detach().square().mean().sqrt())
                    p.add_(noise)

    def after_backward(self) -> float | None:
        """Call between `loss.backward()` and `optimizer.step()`: records the global gradient
        norm (before noise and weight decay) and adds this epoch's gradient noise."""
        if not self._in_epoch:
            raise AdanoiseError("after_backward() outside an epoch: call start_epoch() first")
        grads = [p.grad for p in self.params if p.grad is not None]
        if grads:
            squares = torch.stack([g.detach().to(torch.float64).square().sum() for g in grads])
            norm = squares.sum().sqrt()
            self._norm_sum = norm if self._norm_sum is None else self._norm_sum + norm
        if self.injects and self.grad_sigma > 0:
            with torch.no_grad():
                for i, p in enumerate(self.params):
                    if p.grad is not None:
                        seed = _seed(self.seed, _GRADIENT, self.step, i)
                        p.grad.add_(self._draw(p.grad, self.grad_sigma, seed))
        self.step += 1
        self._steps_in_epoch += 1
        return None

    def end_epoch(self, *, train_loss: float, val_loss: float) -> Decision:
        """Ends the epoch with its mean training loss and its validation loss; returns the
        scheduler's decision, which sets the noise of the next epoch."""
        if not self._in_epoch or self._start is None:
            raise AdanoiseError("end_epoch() without start_epoch()")
        if self._steps_in_epoch == 0 or self._norm_sum is None:
            raise AdanoiseError(
                f"epoch {self.epoch} had no step with gradients: call after_backward() after every loss.backward()"
            )
        grad_norm = float(self._norm_sum) / self._steps_in_epoch
        now = self._flat()
        weight_update = float((now - self._start).norm() / self._start.norm())
        decision = self.scheduler.observe(
            epoch=self.epoch,
            train_loss=float(train_loss),
            val_loss=float(val_loss),
            grad_norm=grad_norm,
            weight_update=weight_update,
        )
        self.last_decision = decision
        self.grad_sigma = decision.grad_sigma
        self.weight_sigma = decision.weight_sigma
        self.last_grad_norm = grad_norm
        self.last_weight_update = weight_update
        self._in_epoch = False
        self._start = None
        return decision

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue after an `end_epoch()` (JSON-serialisable)."""
        if self._in_epoch:
            raise AdanoiseError(
                f"state_dict() in the middle of epoch {self.epoch}: save it after end_epoch()"
            )
        return {
            "scheduler": self.scheduler.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "grad_sigma": self.grad_sigma,
            "weight_sigma": self.weight_sigma,
            "noise": self.noise,
            "seed": self.seed,
            "weight_noise_scale": self.weight_noise_scale,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continues from `state_dict()`: the same decisions and the same noise follow."""
        try:
            self.scheduler.load_state_dict(state["scheduler"])
            self.epoch = int(state["epoch"])
            self.step = int(state["step"])
            self.grad_sigma = float(state["grad_sigma"])
            self.weight_sigma = float(state["weight_sigma"])
            self.noise = str(state["noise"])
            self.seed = int(state["seed"])
            self.weight_noise_scale = str(state.get("weight_noise_scale", "absolute"))
        except KeyError as missing:
            raise AdanoiseError(
                f"the state has no {missing}: pass what AdaptiveNoise.state_dict() returned"
            ) from None
        self._in_epoch = False
