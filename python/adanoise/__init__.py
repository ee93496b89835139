"""Adaptive noise injection for training neural networks.

The noise scheduler and the learning-rate schedule of adanoise, computed by the
same Rust code as the `adanoise` command, so the same observations give the
command's decisions exactly. `adanoise.torch` wires them into a PyTorch training loop,
`adanoise.lightning` into a Lightning `Trainer`, and `adanoise.run` writes such
runs as the command's run directories.

    from adanoise import NoiseScheduler
    scheduler = NoiseScheduler(epochs=300)               # Table V thresholds
    decision = scheduler.observe(epoch=1, train_loss=2.1, val_loss=2.0,
                                 grad_norm=1.3, weight_update=0.02)
    decision.grad_sigma, decision.weight_sigma, decision.flags, decision.cooldown
"""

from ._adanoise import (
    AdanoiseError,
    CosineRestarts,
    Decision,
    NoisePolicy,
    NoiseScheduler,
    defaults_dict,
    uniform_bound,
)

__all__ = [
    "AdanoiseError",
    "CosineRestarts",
    "Decision",
    "NoisePolicy",
    "NoiseScheduler",
    "defaults",
    "uniform_bound",
]


def defaults() -> dict:
    """The study's defaults (Tables IV and V), every noise policy's parameters and label
    smoothing, keyed as in a run's config.toml: the values `NoisePolicy`, `AdaptiveNoise`
    and the command take for what is left out."""
    return defaults_dict()
