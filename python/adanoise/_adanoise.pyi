"""Type hints of the compiled core (see `adanoise`)."""

from typing import Any

class AdanoiseError(ValueError):
    """A value adanoise cannot work with; the message says what was wrong and what to do."""

class Decision:
    """The decision taken after an epoch: the noise of the next epoch."""

    @property
    def epoch(self) -> int: ...
    @property
    def grad_sigma(self) -> float: ...
    @property
    def weight_sigma(self) -> float: ...
    @property
    def flags(self) -> list[str]: ...
    @property
    def cooldown(self) -> int: ...
    @property
    def injects(self) -> bool: ...
    def to_dict(self) -> dict[str, Any]: ...
    @staticmethod
    def from_dict(record: dict[str, Any]) -> Decision: ...

class NoiseScheduler:
    """The adaptive noise scheduler; thresholds are the `[noise_scheduler]` keys.

    Keywords (defaults of the study's Table V): min_epochs_before_flag=70,
    flag_window=10, val_plateau_delta=1e-4, overfit_epochs=3, grad_plateau=0.025,
    low_weight_update=5e-4, sigma_min=0.01, sigma_max=0.05,
    consecutive_trigger=10, cooldown_min=3, cooldown_max=10.
    """

    def __init__(self, epochs: int, **thresholds: float) -> None: ...
    def observe(
        self,
        *,
        epoch: int,
        train_loss: float,
        val_loss: float,
        grad_norm: float,
        weight_update: float,
    ) -> Decision: ...
    @property
    def config(self) -> dict[str, float]: ...
    @property
    def epochs(self) -> int: ...
    @property
    def observed(self) -> int: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...

class CosineRestarts:
    """Cosine annealing with decaying restarts (the study's Table IV)."""

    def __init__(
        self,
        lr_max: float,
        epochs: int,
        steps_per_epoch: int,
        restart_epochs: int = 50,
        t_mult: float = 1.0,
        lr_final_max: float = 1e-5,
        lr_min: float = 1e-6,
    ) -> None: ...
    def lr_at(self, step: int) -> float: ...
    @property
    def total_steps(self) -> int: ...

class NoisePolicy:
    """Who sets the noise (adaptive, constant, annealed, anti-pgd, perturbed, langevin,
    label-noise, shrink-perturb), with its parameters, and how the adaptive weight noise is
    scaled (relative, the default; absolute; none). A parameter left out takes core's
    default (`adanoise.defaults()`)."""

    def __init__(
        self,
        policy: str = "adaptive",
        *,
        noise_sigma: float = ...,
        anneal_eta: float = ...,
        anneal_gamma: float = ...,
        weight_noise_scale: str = "relative",
        anti_pgd_sigma: float = ...,
        perturb_threshold: float = ...,
        perturb_interval: int | None = None,
        perturb_radius: float = ...,
        langevin_temperature: float = ...,
        label_noise: float = ...,
        shrink_every: int | None = None,
        shrink_factor: float = ...,
        shrink_sigma: float = ...,
    ) -> None: ...
    @property
    def policy(self) -> str: ...
    @property
    def weight_noise_scale(self) -> str: ...
    def grad_sigma(self, decided: float, step: int) -> float: ...
    def weight_sigma(self, decided: float) -> float: ...
    def epoch_start(self, epoch: int, decided: float) -> tuple[float, float, str] | None:
        """`(shrink, sigma, scale)` of `w <- shrink * w + noise` at the start of `epoch`, or None."""
    def after_step(self, lr: float) -> dict[str, Any]:
        """What the policy does after a step's update at rate `lr`: {"kind": "nothing" |
        "anticorrelated" | "langevin" | "perturbed", ...its parameters}."""
    def perturb_fires(self, step: int, norm: float, last: int | None) -> bool: ...
    def label_noise(self) -> float | None: ...
    def label(self) -> str: ...
    def check_injects(self, noise: str, epochs: int) -> None: ...
    def to_dict(self) -> dict[str, Any]: ...

def defaults_dict() -> dict[str, Any]: ...
def uniform_bound(sigma: float) -> float: ...
