"""A benchmark job through Lightning's `Trainer` with its defaults (checkpoint each epoch, progress bar, logger,
sanity validation): the job's model in a LightningModule whose `training_step` is the job's loss, its optimizer
and schedule from `configure_optimizers` (stepped per optimizer step), clipping by `gradient_clip_val`; validation
each epoch in `validation_step` (untimed). Training time from the epoch's start to its last optimizer step, as
accel_train counts it.

    python tests/benchmarks/peer_lightning.py --job digits --out /tmp/lightning
"""

from __future__ import annotations

import json

import lightning.pytorch as pl

from bench_jobs import Accuracy, EpochClock, Tally, parse


class BenchModule(pl.LightningModule):
    def __init__(self, bench, batches: int):
        super().__init__()
        self.bench, self.model, self.batches = bench, bench.parts.model, batches
        self.accuracy, self.tally, self.final = Accuracy(bench), Tally(bench, batches), 0.0

    def configure_optimizers(self):
        optimizer, scheduler = self.bench.optimizer(self.model, self.batches)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_train_epoch_start(self):
        self.tally.start_epoch()

    def training_step(self, batch, batch_idx):
        loss, n = self.bench.loss(self.model, batch)
        self.tally.add(loss, n)
        return loss

    def on_validation_epoch_start(self):
        self.accuracy.start(self.model)

    def validation_step(self, batch, batch_idx):
        self.accuracy.update(self.model, batch)

    def on_validation_epoch_end(self):
        self.final = self.accuracy.result()


class Clock(pl.Callback):
    def __init__(self):
        self.clock = EpochClock()

    def on_train_epoch_start(self, trainer, module):
        self.clock.begin()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.clock.step()

    def on_train_epoch_end(self, trainer, module):
        self.clock.close()
        print(module.tally.line(trainer.current_epoch + 1, module.final), flush=True)


def main(argv: list[str] | None = None) -> dict:
    bench, out = parse(argv, "Lightning's Trainer")
    cfg = bench.cfg
    train_loader, eval_loader = bench.loader(train=True), bench.loader(train=False)
    module, clock = BenchModule(bench, len(train_loader)), Clock()
    trainer = pl.Trainer(accelerator="cpu", devices=1, precision="32-true", max_epochs=cfg.epochs,
                         max_steps=cfg.max_steps or -1, gradient_clip_val=cfg.max_grad_norm, default_root_dir=str(out),
                         callbacks=[clock])
    trainer.fit(module, train_loader, eval_loader)
    assert module.tally.steps == trainer.global_step  # one loss per optimizer step (no accumulation)
    return module.tally.result(bench, clock.clock.close(), module.final)


if __name__ == "__main__":
    print(json.dumps(main()))
