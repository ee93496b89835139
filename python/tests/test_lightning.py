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

from conftest import run_adanoise  # noqa: E402
from helpers import FIRING, data, model  # noqa: E402


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
