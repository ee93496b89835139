"""adanoise in a Lightning `Trainer`: a callback that does what
`adanoise.torch.AdaptiveNoise` does in a plain loop.

    from adanoise.lightning import AdaptiveNoiseCallback
    trainer = lightning.Trainer(max_epochs=300, callbacks=[AdaptiveNoiseCallback(noise="gaussian", seed=0)])

The module must log its epoch's mean training loss and its validation loss
(`self.log("train_loss", loss, on_epoch=True)` in `training_step`,
`self.log("val_loss", loss)` in `validation_step`; other names with
`train_metric=` and `val_metric=`), and the Trainer must validate at the end of
every epoch (the default): the scheduler decides after each epoch from that
epoch's validation loss, so a Trainer that validates less often is refused when
fitting starts. Weight noise (or shrink and perturb) lands at each training
epoch's start; the gradient norm is measured and the gradient noise added in
`on_before_optimizer_step`, once per optimiser step (after Lightning's gradient
accumulation, and after its mixed-precision plugin unscaled the gradients: with
"16-mixed" a step the scaler skips is skipped here too); the policies that act
on the weights after the update (anti-PGD, perturbed gradient descent, Langevin
dynamics) act from the optimiser's post-step hook, right after each optimiser
step Lightning takes; the scheduler decides at the epoch's end, after
validation. Under `policy="label-noise"` the module trains on
`callback.noisy_labels(y, classes)`. Under DDP every rank decides alike. With
`run_dir=`, the run is also written as an `adanoise` run directory, which
`adanoise report` and `adanoise plot` read; a fit resumed from a checkpoint
(`ckpt_path=`) continues it, recording again the epochs it redoes.
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
    `noise`, `seed`, `weight_noise_scale` ("relative", the default; "absolute"; "none")
    and the other keywords are `AdaptiveNoise`'s (`policy` and its parameters, the
    scheduler's thresholds). `run_dir`: write the run there as an adanoise run directory,
    with `model` (a name), `lr` (the initial peak rate), `batch_size` (the images of one
    optimiser step; default: the training DataLoader's batch size times the processes times
    `accumulate_grad_batches`), `label_smoothing` (the training loss's, to label the run)
    and `acc_metric` / `val_acc_metric` (the logged accuracies) recorded with it.
    """

    def __init__(
        self,
        epochs: int | None = None,
        noise: str = "gaussian",
        seed: int = 0,
        *,
        weight_noise_scale: str = "relative",
        train_metric: str = "train_loss",
        val_metric: str = "val_loss",
        run_dir: str | None = None,
        model: str = "other",
        lr: float | None = None,
        batch_size: int | None = None,
        label_smoothing: float = 0.0,
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
        self.batch_size = batch_size
        self.label_smoothing = label_smoothing
        self.acc_metric = acc_metric
        self.val_acc_metric = val_acc_metric
        self.options = {"weight_noise_scale": weight_noise_scale, **noise_options}
        self.noise: AdaptiveNoise | None = None
        self._pending_state: dict[str, Any] | None = None
        self.run = None
        self.decisions: list = []
        # Training batches of this epoch seen here, and how many had passed when the last
        # validation ended: the epoch's validation loss is its own only if that is all.
        self._batches = 0
        self._validated_after: int | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # The state Lightning restored for this fit, taken now: a fit refused below leaves
        # none behind for a later fit that does not resume.
        pending, self._pending_state = self._pending_state, None
        _check_validation_every_epoch(trainer)
        epochs = self.epochs or trainer.max_epochs
        if not epochs or epochs < 1:
            raise AdanoiseError("give the callback `epochs`, or the Trainer `max_epochs`: the noise damping needs E_max")
        # Lightning's mixed-precision plugin unscales before `on_before_optimizer_step`, and
        # its scaler skips a step whose gradients are not finite: so is it skipped here.
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        noise = AdaptiveNoise(
            pl_module.parameters(),
            epochs,
            self.kind,
            self.seed,
            skip_non_finite=scaler is not None,
            **self.options,
        )
        if pending is not None:
            try:
                noise.load_state_dict(pending)
            except BaseException:
                noise.remove_hooks()
                raise
        self._close_run()
        if self.noise is not None:
            self.noise.remove_hooks()
        self.noise = noise

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        _check_validation_at_epoch_end(trainer)
        self._batches, self._validated_after = 0, None
        if self.run_dir is not None and trainer.is_global_zero:
            from .run import RunDirectory

            optimizer = trainer.optimizers[0]
            group = optimizer.param_groups[0]
            lr = self.lr if self.lr is not None else group.get("initial_lr", group["lr"])
            max_epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None
            self.run = RunDirectory(
                self.run_dir, model=self.model_name, optimizer=optimizer, lr=lr,
                epochs=max_epochs or self.noise.scheduler.epochs, noise=self.noise,
                batch_size=self._batch_size(trainer), label_smoothing=self.label_smoothing,
            )

    def _batch_size(self, trainer: pl.Trainer) -> int:
        if self.batch_size is not None:
            return self.batch_size
        per_loader = getattr(trainer.train_dataloader, "batch_size", None)
        if not isinstance(per_loader, int):
            raise AdanoiseError(
                "a run directory records the run's batch size, and the training DataLoader does not give one "
                "(it batches with a sampler): pass batch_size= (the images of one optimiser step) to the callback"
            )
        return per_loader * trainer.world_size * trainer.accumulate_grad_batches

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._batches, self._validated_after = 0, None
        self.noise.start_epoch()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        # The optimiser's post-step hook has acted on the batch's update already; this covers
        # a strategy that steps the optimiser without its hooks (then it does what they did).
        self.noise.after_step()
        self._batches += 1
        if self._batches == 1:
            self._check_epoch_means(trainer)

    def _check_epoch_means(self, trainer: pl.Trainer) -> None:
        """Refuses a training metric logged per step only: at the epoch's end it holds the
        last batch's value, not the epoch's mean."""
        names = [self.train_metric] + ([self.acc_metric] if self.run is not None else [])
        for name in names:
            if _logged_per_step_only(trainer, name):
                raise AdanoiseError(
                    f"{name!r} is logged per step only (Lightning's default in training_step), so at the "
                    "epoch's end it holds the last batch's value, not the epoch's mean that the noise "
                    f"scheduler reads: log it with self.log({name!r}, ..., on_epoch=True)"
                )

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._validated_after = self._batches

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        # With the optimiser, the adapter hooks its after-step action to the step that follows
        # (a strategy's own optimiser wrapper is left alone: on_train_batch_end acts instead).
        self.noise.before_step(optimizer if isinstance(optimizer, torch.optim.Optimizer) else None)

    def noisy_labels(self, targets: torch.Tensor, classes: int) -> torch.Tensor:
        """The labels the module trains the batch on under `policy="label-noise"`
        (`AdaptiveNoise.noisy_labels`): call it in `training_step`, and log accuracy against
        the true labels."""
        if self.noise is None:
            raise AdanoiseError("noisy_labels() before fitting started: call it in training_step")
        return self.noise.noisy_labels(targets, classes)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check_epoch_means(trainer)
        if self._batches == 0 and self._validated_after is None:
            # Resumed from a checkpoint taken after the epoch's last batch and validation but
            # before its end, which Lightning takes at validation's end when it validates
            # more than once an epoch: it does not keep the epoch's logged means.
            raise AdanoiseError(
                f"the fit resumed at the end of epoch {self.noise.epoch}, from a checkpoint saved after its "
                "validation and before the epoch ended, and Lightning does not keep the epoch's logged "
                f"{self.train_metric!r} and {self.val_metric!r} across a resume, which the noise scheduler "
                "decides from: resume from a checkpoint of an epoch's end or middle (ModelCheckpoint("
                "save_on_train_epoch_end=True) saves at epochs' ends)"
            )
        if self._validated_after != self._batches:
            when = (
                "no validation ran in it" if self._validated_after is None
                else f"its last validation ran after {self._validated_after} of its {self._batches} training batches"
            )
            raise AdanoiseError(
                f"validation did not run at the end of epoch {self.noise.epoch} ({when}), and the noise scheduler "
                f"decides from each epoch's validation loss ({self.val_metric!r}): give the Trainer validation "
                "data, and validate at the end of every epoch (check_val_every_n_epoch=1, val_check_interval=1.0)"
            )
        train_loss = _metric(trainer, self.train_metric)
        val_loss = _metric(trainer, self.val_metric)
        missing = [n for n, v in ((self.train_metric, train_loss), (self.val_metric, val_loss)) if v is None]
        if missing:
            raise AdanoiseError(
                f"the callback reads the logged {', '.join(missing)} at each epoch's end: log "
                f"{missing[0]!r} (self.log(..., on_epoch=True)), or name the metric with "
                "train_metric= / val_metric="
            )
        if self.run is not None:
            acc = _metric(trainer, self.acc_metric)
            val_acc = _metric(trainer, self.val_acc_metric)
            if acc is None or val_acc is None:
                raise AdanoiseError(
                    f"a run directory records accuracies: log {self.acc_metric!r} and "
                    f"{self.val_acc_metric!r} (or name them with acc_metric= / val_acc_metric=)"
                )
        decision = self.noise.end_epoch(train_loss=train_loss, val_loss=val_loss)
        self.decisions.append(decision)
        if self.run is not None:
            self.run.record_epoch(
                train_loss=train_loss,
                train_acc=acc,
                val_loss=val_loss,
                val_acc=val_acc,
                lr=trainer.optimizers[0].param_groups[0]["lr"],
            )

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        # The run stops here and may resume: its directory is released, not marked.
        self._close_run()

    def _close_run(self) -> None:
        if self.run is not None:
            self.run.close()
            self.run = None

    def state_dict(self) -> dict[str, Any]:
        return {} if self.noise is None else {"noise": self.noise.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending_state = state_dict.get("noise")


def _logged_per_step_only(trainer: pl.Trainer, name: str) -> bool:
    """Whether the training loop's results hold `name` logged without on_epoch. Reads
    Lightning's result collection where it is; where it is not, assumes nothing."""
    results = getattr(getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None), "_results", None)
    try:
        metas = [m.meta for m in results.values() if getattr(getattr(m, "meta", None), "name", None) == name]
    except (AttributeError, TypeError):
        return False
    return bool(metas) and not any(getattr(m, "on_epoch", True) for m in metas)


def _check_validation_every_epoch(trainer: pl.Trainer) -> None:
    """Refuses, before anything runs, a Trainer whose settings skip validation in some epochs."""
    every = trainer.check_val_every_n_epoch
    if every != 1:
        how = f"every {every} epochs" if every else "by training steps counted across epochs"
        raise AdanoiseError(
            f"the Trainer validates {how} (check_val_every_n_epoch={every!r}), but the noise scheduler decides "
            "after every epoch from that epoch's validation loss: pass check_val_every_n_epoch=1 (and "
            "val_check_interval=1.0, or a number of batches that divides the epoch), or, to validate less "
            "often, use adanoise.torch.AdaptiveNoise in your own loop with a validation loss per epoch"
        )
    if trainer.limit_val_batches == 0:
        raise AdanoiseError(
            "limit_val_batches=0 turns validation off, but the noise scheduler decides after every epoch from "
            "that epoch's validation loss: give limit_val_batches a number of batches, or a fraction, above 0"
        )


def _check_validation_at_epoch_end(trainer: pl.Trainer) -> None:
    """Refuses, once the training data is known, a validation schedule that misses an epoch's
    end."""
    if getattr(trainer, "_val_check_time_interval", None) is not None:
        raise AdanoiseError(
            f"the Trainer validates by time (val_check_interval={trainer.val_check_interval!r}), but the noise "
            "scheduler decides after every epoch from that epoch's validation loss: pass val_check_interval=1.0"
        )
    every, batches = trainer.val_check_batch, trainer.num_training_batches
    if isinstance(every, int) and isinstance(batches, int) and every > 0 and batches % every:
        raise AdanoiseError(
            f"the Trainer validates every {every} training batches (val_check_interval="
            f"{trainer.val_check_interval!r}), and an epoch has {batches}: its last validation comes before the "
            "epoch's end, but the noise scheduler decides from each epoch's own validation loss: pass "
            "val_check_interval=1.0, or a number of batches that divides the epoch"
        )
