"""adanoise in a Lightning `Trainer`: a callback that does what
`adanoise.torch.AdaptiveNoise` does in a plain loop.

    from adanoise.lightning import AdaptiveNoiseCallback
    trainer = lightning.Trainer(max_epochs=300, callbacks=[AdaptiveNoiseCallback(noise="gaussian", seed=0)])

The module must log its epoch's mean training loss and its validation loss
(`self.log("train_loss", loss, on_epoch=True)` in `training_step`,
`self.log("val_loss", loss)` in `validation_step`; other names with
`train_metric=` and `val_metric=`). Weight noise lands at each training
epoch's start; the gradient norm is measured and the gradient noise added in
`on_before_optimizer_step`, once per optimiser step (after Lightning's
gradient accumulation, and after its mixed-precision plugin unscaled the
gradients: with "16-mixed" a step the scaler skips is skipped here too); the
scheduler decides at the epoch's end, after validation. Under DDP every rank
decides alike. With `run_dir=`, the run is also written as an `adanoise` run
directory, which `adanoise report` and `adanoise plot` read.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch

from ._adanoise import AdanoiseError
from .torch import AdaptiveNoise

__all__ = ["AdaptiveNoiseCallback"]


def _metric(trainer: pl.Trainer, name: str) -> float | None:
    metrics = trainer.callback_metrics
    for key in (f"{name}_epoch", name):
        if key in metrics:
            return float(metrics[key])
    return None


class AdaptiveNoiseCallback(pl.Callback):
    """Adaptive noise injection for a Lightning module (see the module's docs).

    `epochs`: `E_max` of the noise damping (default: the trainer's `max_epochs`).
    `noise`, `seed` and the other keywords are `AdaptiveNoise`'s (`policy`,
    `weight_noise_scale`, the scheduler's thresholds). `run_dir`: write the run there as
    an adanoise run directory, with `model` (a name), `lr` (the initial peak rate) and
    `acc_metric` / `val_acc_metric` (the logged accuracies, if any) recorded with it.
    """

    def __init__(
        self,
        epochs: int | None = None,
        noise: str = "gaussian",
        seed: int = 0,
        *,
        train_metric: str = "train_loss",
        val_metric: str = "val_loss",
        run_dir: str | None = None,
        model: str = "other",
        lr: float | None = None,
        acc_metric: str = "train_acc",
        val_acc_metric: str = "val_acc",
        **noise_options: Any,
    ) -> None:
        super().__init__()
        self.epochs = epochs
        self.kind = noise
        self.seed = seed
        self.train_metric = train_metric
        self.val_metric = val_metric
        self.run_dir = run_dir
        self.model_name = model
        self.lr = lr
        self.acc_metric = acc_metric
        self.val_acc_metric = val_acc_metric
        self.options = noise_options
        self.noise: AdaptiveNoise | None = None
        self._pending_state: dict[str, Any] | None = None
        self.run = None
        self.decisions: list = []

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epochs = self.epochs or trainer.max_epochs
        if not epochs or epochs < 1:
            raise AdanoiseError("give the callback `epochs`, or the Trainer `max_epochs`: the noise damping needs E_max")
        # Lightning's mixed-precision plugin unscales before `on_before_optimizer_step`, and
        # its scaler skips a step whose gradients are not finite: so is it skipped here.
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        self.noise = AdaptiveNoise(
            pl_module.parameters(),
            epochs,
            self.kind,
            self.seed,
            skip_non_finite=scaler is not None,
            **self.options,
        )
        if self._pending_state is not None:
            self.noise.load_state_dict(self._pending_state)
            self._pending_state = None
        if self.run_dir is not None and trainer.is_global_zero:
            from .run import RunDirectory

            optimizer = trainer.optimizers[0]
            lr = self.lr if self.lr is not None else optimizer.param_groups[0].get("initial_lr", optimizer.param_groups[0]["lr"])
            self.run = RunDirectory(
                self.run_dir, model=self.model_name, optimizer=optimizer, lr=lr,
                epochs=trainer.max_epochs or epochs, noise=self.noise,
            )

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.noise.start_epoch()

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        self.noise.before_step()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        train_loss = _metric(trainer, self.train_metric)
        val_loss = _metric(trainer, self.val_metric)
        missing = [n for n, v in ((self.train_metric, train_loss), (self.val_metric, val_loss)) if v is None]
        if missing:
            raise AdanoiseError(
                f"the callback reads the logged {', '.join(missing)} at each epoch's end: log "
                f"{missing[0]!r} (self.log(..., on_epoch=True)), or name the metric with "
                "train_metric= / val_metric="
            )
        decision = self.noise.end_epoch(train_loss=train_loss, val_loss=val_loss)
        self.decisions.append(decision)
        if self.run is not None:
            acc = _metric(trainer, self.acc_metric)
            val_acc = _metric(trainer, self.val_acc_metric)
            optimizer = trainer.optimizers[0]
            if acc is None or val_acc is None:
                raise AdanoiseError(
                    f"a run directory records accuracies: log {self.acc_metric!r} and "
                    f"{self.val_acc_metric!r} (or name them with acc_metric= / val_acc_metric=)"
                )
            self.run.record_epoch(
                train_loss=train_loss,
                train_acc=acc,
                val_loss=val_loss,
                val_acc=val_acc,
                lr=optimizer.param_groups[0]["lr"],
            )

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.run is not None:
            self.run.finish()

    def state_dict(self) -> dict[str, Any]:
        return {} if self.noise is None else {"noise": self.noise.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending_state = state_dict.get("noise")
