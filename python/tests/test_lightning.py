"""`adanoise.lightning.AdaptiveNoiseCallback` in a real Lightning `Trainer` on the CPU,
at full precision and with "bf16-mixed": noise fires in the epochs the decisions name,
once per optimiser step (gradient accumulation included), and the run directory it
writes is one that `adanoise report` and `adanoise plot` read."""

import json

import pytest
import torch
import torch.nn.functional as F

lightning = pytest.importorskip("lightning")

from adanoise import AdanoiseError  # noqa: E402
from adanoise.lightning import AdaptiveNoiseCallback  # noqa: E402
from adanoise.torch import AdaptiveNoise  # noqa: E402

from conftest import run_adanoise  # noqa: E402
from helpers import FIRING, data, flat, model  # noqa: E402


class Module(lightning.pytorch.LightningModule):
    def __init__(self, log_losses=True):
        super().__init__()
        self.net = model()
        self.log_losses = log_losses

    def training_step(self, batch, _):
        x, y = batch
        logits = self.net(x)
        loss = F.cross_entropy(logits, y)
        if self.log_losses:
            self.log("train_loss", loss, on_epoch=True, on_step=False)
            self.log("train_acc", (logits.argmax(1) == y).float().mean(), on_epoch=True, on_step=False)
        return loss

    def validation_step(self, batch, _):
        x, y = batch
        logits = self.net(x)
        if self.log_losses:
            self.log("val_loss", F.cross_entropy(logits, y))
            self.log("val_acc", (logits.argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def loader():
    batches = data()
    x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=len(batches[0][0]))


def fit(callback, precision="32-true", epochs=4, accumulate=1, module=None):
    trainer = lightning.pytorch.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        precision=precision,
        accumulate_grad_batches=accumulate,
        callbacks=[callback],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module or Module(), train_dataloaders=loader(), val_dataloaders=loader())
    return trainer


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_the_callback_decides_every_epoch_and_noise_fires(precision):
    callback = AdaptiveNoiseCallback(noise="gaussian", seed=0, **FIRING)
    fit(callback, precision)
    assert [d.epoch for d in callback.decisions] == [1, 2, 3, 4]
    assert any(d.grad_sigma > 0 for d in callback.decisions)
    assert callback.noise.step == 4 * len(data())


def test_gradient_accumulation_counts_optimizer_steps():
    callback = AdaptiveNoiseCallback(noise="gaussian", seed=0, **FIRING)
    fit(callback, accumulate=2)
    assert callback.noise.step == 4 * len(data()) // 2


def test_missing_logged_losses_are_explained():
    callback = AdaptiveNoiseCallback(noise="gaussian", seed=0, **FIRING)
    with pytest.raises(AdanoiseError, match="log 'train_loss'"):
        fit(callback, module=Module(log_losses=False))


def test_a_lightning_run_directory_gives_the_report_and_figure(tmp_path):
    run = tmp_path / "runs" / "lightning-mlp"
    callback = AdaptiveNoiseCallback(noise="gaussian", seed=0, run_dir=str(run), model="mlp", **FIRING)
    fit(callback)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["epochs_done"] == 4
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["decision"]["epoch"] for m in lines] == [1, 2, 3, 4]
    report = run_adanoise("report", str(tmp_path / "runs"))
    assert "mlp" in report, report
    plotted = run_adanoise("plot", str(run))
    assert "figure1" in plotted, plotted


def test_a_run_resumed_from_a_lightning_checkpoint_decides_as_an_uninterrupted_one(tmp_path):
    whole = AdaptiveNoiseCallback(epochs=4, noise="gaussian", seed=0, **FIRING)
    fit(whole, epochs=4)

    def checkpointing(epochs, callback, ckpt_path=None):
        trainer = lightning.pytorch.Trainer(
            max_epochs=epochs, accelerator="cpu", devices=1, logger=False,
            callbacks=[callback, lightning.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path, save_last=True)],
            enable_progress_bar=False, enable_model_summary=False,
        )
        trainer.fit(Module(), train_dataloaders=loader(), val_dataloaders=loader(), ckpt_path=ckpt_path)

    first = AdaptiveNoiseCallback(epochs=4, noise="gaussian", seed=0, **FIRING)
    checkpointing(2, first)
    rest = AdaptiveNoiseCallback(epochs=4, noise="gaussian", seed=0, **FIRING)
    checkpointing(4, rest, ckpt_path=str(tmp_path / "last.ckpt"))
    got = [d.to_dict() for d in first.decisions + rest.decisions]
    assert got == [d.to_dict() for d in whole.decisions]


class Observer(lightning.pytorch.Callback):
    """What the noise callback observed at each epoch's end (this one runs after it)."""

    def __init__(self, noise_callback):
        self.of = noise_callback
        self.seen = []

    def on_train_epoch_end(self, trainer, pl_module):
        noise = self.of.noise
        self.seen.append((noise.last_grad_norm, noise.last_weight_update, noise.last_decision.to_dict()))


def trainer_with(*callbacks, epochs=2, **options):
    return lightning.pytorch.Trainer(
        max_epochs=epochs, accelerator="cpu", devices=1, logger=False, callbacks=list(callbacks),
        enable_progress_bar=False, enable_model_summary=False,
        **{"enable_checkpointing": any(isinstance(c, ModelCheckpoint) for c in callbacks), **options},
    )


ModelCheckpoint = lightning.pytorch.callbacks.ModelCheckpoint


def test_checkpoints_at_every_step_change_nothing_the_callback_observes(tmp_path):
    def observed(checkpoint):
        callback = AdaptiveNoiseCallback(noise="gaussian", seed=0, **FIRING)
        observer = Observer(callback)
        extra = [ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=1)] if checkpoint else []
        trainer_with(callback, observer, *extra, epochs=3).fit(
            Module(), train_dataloaders=loader(), val_dataloaders=loader()
        )
        return observer.seen

    plain = observed(checkpoint=False)
    assert observed(checkpoint=True) == plain
    assert any(d["grad_sigma"] > 0 for *_, d in plain), "the thresholds should make noise fire"


def test_a_lightning_run_directory_resumes_from_its_checkpoint_redoing_the_epochs_past_it(tmp_path):
    run = tmp_path / "runs" / "mlp"
    checkpoints = tmp_path / "checkpoints"

    def fitting(epochs, ckpt_path=None):
        callback = AdaptiveNoiseCallback(epochs=4, noise="gaussian", seed=0, run_dir=str(run), model="mlp", **FIRING)
        every_epoch = ModelCheckpoint(dirpath=checkpoints, save_top_k=-1, filename="{epoch}")
        trainer_with(callback, every_epoch, epochs=epochs).fit(
            Module(), train_dataloaders=loader(), val_dataloaders=loader(), ckpt_path=ckpt_path
        )
        return callback

    fitting(3)
    first = (run / "metrics.jsonl").read_text().splitlines()
    # Resumed from the checkpoint after epoch 2, to more epochs: epoch 3 is redone.
    callback = fitting(4, ckpt_path=str(checkpoints / "epoch=1.ckpt"))
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3, 4]
    assert lines[:2] == first[:2]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["epochs_done"] == 4
    config = (run / "config.toml").read_text()
    assert "epochs = 4\n" in config and 'weight_noise_scale = "relative"\n' in config
    assert callback.noise.policy.weight_noise_scale == "relative"
    assert "mlp" in run_adanoise("report", str(tmp_path / "runs"))


@pytest.mark.parametrize(
    "options, match",
    [
        (dict(check_val_every_n_epoch=2), "check_val_every_n_epoch=1"),
        (dict(limit_val_batches=0), "limit_val_batches"),
        (dict(val_check_interval=3), "val_check_interval"),
    ],
    ids=["every 2 epochs", "validation off", "last validation mid-epoch"],
)
def test_a_trainer_that_does_not_validate_at_every_epochs_end_is_refused_before_training(options, match):
    callback = AdaptiveNoiseCallback(noise="gaussian", seed=0, **FIRING)
    trainer = trainer_with(callback, **options)
    with pytest.raises(AdanoiseError, match=match) as refused:
        trainer.fit(Module(), train_dataloaders=loader(), val_dataloaders=loader())
    assert "validation loss" in str(refused.value)
    assert trainer.global_step == 0


def test_a_module_without_validation_is_told_that_validation_did_not_run():
    callback = AdaptiveNoiseCallback(noise="gaussian", seed=0, **FIRING)
    with pytest.raises(AdanoiseError, match="validation did not run"):
        trainer_with(callback).fit(Module(), train_dataloaders=loader())


class PerStepModule(Module):
    def training_step(self, batch, _):
        x, y = batch
        loss = F.cross_entropy(self.net(x), y)
        self.log("train_loss", loss)  # Lightning's default here: per step only
        return loss


def test_a_training_loss_logged_per_step_only_is_refused_at_the_first_batch():
    callback = AdaptiveNoiseCallback(noise="gaussian", seed=0, **FIRING)
    trainer = trainer_with(callback)
    with pytest.raises(AdanoiseError, match="on_epoch=True"):
        trainer.fit(PerStepModule(), train_dataloaders=loader(), val_dataloaders=loader())
    assert trainer.global_step == 1


def test_a_state_restored_for_a_refused_fit_is_not_taken_by_the_next_fit():
    module = Module()
    noise = AdaptiveNoise(module.parameters(), 2, "gaussian", 0, **FIRING)
    noise.start_epoch()
    for x, y in loader():
        F.cross_entropy(module.net(x), y).backward()
        noise.before_step()
    noise.end_epoch(train_loss=1.0, val_loss=1.0)
    callback = AdaptiveNoiseCallback(noise="gaussian", seed=0, **FIRING)
    callback.load_state_dict({"noise": noise.state_dict()})  # as Lightning restores a checkpoint
    with pytest.raises(AdanoiseError, match="max_epochs"):
        trainer_with(callback, epochs=-1).fit(module, train_dataloaders=loader(), val_dataloaders=loader())
    trainer_with(callback, epochs=2).fit(Module(), train_dataloaders=loader(), val_dataloaders=loader())
    assert [d.epoch for d in callback.decisions] == [1, 2], "the second fit does not resume"


def test_a_fit_resumes_from_the_middle_of_an_epoch_and_explains_a_checkpoint_it_cannot_continue(tmp_path):
    def fitting(epochs, callback, ckpt_path=None):
        every_validation = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, filename="{step}")
        trainer_with(callback, every_validation, epochs=epochs, val_check_interval=0.5).fit(
            Module(), train_dataloaders=loader(), val_dataloaders=loader(), ckpt_path=ckpt_path
        )

    fitting(1, AdaptiveNoiseCallback(epochs=2, noise="gaussian", seed=0, **FIRING))
    middle = AdaptiveNoiseCallback(epochs=2, noise="gaussian", seed=0, **FIRING)
    fitting(2, middle, ckpt_path=str(tmp_path / "step=2.ckpt"))
    assert [d.epoch for d in middle.decisions] == [1, 2]
    assert middle.noise.step == 2 * len(data())
    with pytest.raises(AdanoiseError, match="save_on_train_epoch_end=True"):
        fitting(2, AdaptiveNoiseCallback(epochs=2, noise="gaussian", seed=0, **FIRING), str(tmp_path / "step=4.ckpt"))


class StillModule(Module):
    """A module whose optimiser never moves the weights (learning rate 0): what moves them is
    the noise policy alone."""

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def test_anti_pgd_acts_after_every_optimizer_step_lightning_takes():
    sigma = 0.01
    callback = AdaptiveNoiseCallback(noise="gaussian", seed=0, policy="anti-pgd", anti_pgd_sigma=sigma)
    module = StillModule()
    start = flat(module.net)
    fit(callback, epochs=2, accumulate=2, module=module)
    steps = 2 * len(data()) // 2
    assert callback.noise.step == steps
    moved = flat(module.net) - start
    # xi_steps - xi_0: two draws, whatever the number of steps.
    assert moved.std().item() == pytest.approx(sigma * 2**0.5, rel=0.06)
    assert [d.epoch for d in callback.decisions] == [1, 2]
    # The same steps in a plain loop that calls after_step() itself.
    net = model()
    opt = torch.optim.SGD(net.parameters(), lr=0.0)
    noise = AdaptiveNoise(net.parameters(), 2, "gaussian", seed=0, policy="anti-pgd", anti_pgd_sigma=sigma)
    noise.start_epoch()
    for x, y in data()[:steps]:
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        noise.before_step()
        opt.step()
        noise.after_step()
    assert torch.equal(flat(net), flat(module.net))


class NoisyLabelModule(Module):
    """Trains on the callback's noisy labels, and counts how many it changed."""

    changed = 0

    def training_step(self, batch, index):
        x, y = batch
        callback = next(c for c in self.trainer.callbacks if isinstance(c, AdaptiveNoiseCallback))
        noisy = callback.noisy_labels(y, 10)
        NoisyLabelModule.changed += int((noisy != y).sum())
        return super().training_step((x, noisy), index)


def test_label_noise_in_lightning_trains_on_the_callbacks_labels():
    callback = AdaptiveNoiseCallback(noise="uniform", seed=0, policy="label-noise", label_noise=1.0)
    NoisyLabelModule.changed = 0
    fit(callback, epochs=1, module=NoisyLabelModule())
    images = sum(len(b[1]) for b in data())
    # Every label redrawn uniformly: 9 in 10 change (binomial std about 5 over 256 labels).
    assert abs(NoisyLabelModule.changed - 0.9 * images) < 25, NoisyLabelModule.changed
    assert callback.noise.last_applied["label_noise"] == 1.0
