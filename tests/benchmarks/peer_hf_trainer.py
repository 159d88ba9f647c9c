"""A benchmark job through the Hugging Face `Trainer`: the job's model, data, collator, optimizer and schedule
handed to it (`optimizers=`), its own loop, clipping (`max_grad_norm`), sampler and checkpoints (one per epoch,
the newest kept, as accel_train keeps); `compute_loss` is the job's loss. Validation after each epoch from a
callback (untimed); training time from the epoch's start to its last optimizer step, as accel_train counts it.

    python tests/benchmarks/peer_hf_trainer.py --job digits --out /tmp/hf
"""

from __future__ import annotations

import json

from torch.utils.data import default_collate
from transformers import Trainer, TrainerCallback, TrainingArguments

from bench_jobs import Accuracy, EpochClock, Tally, parse


class BenchTrainer(Trainer):
    """Trainer with the job's loss, tallied."""

    def __init__(self, bench, tally: Tally, **kwargs):
        super().__init__(**kwargs)
        self.bench, self.tally = bench, tally

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, n = self.bench.loss(model, inputs)
        self.tally.add(loss, n)
        return loss


class Epochs(TrainerCallback):
    """Times the training steps of each epoch and validates after it."""

    def __init__(self, trainer: BenchTrainer, eval_loader):
        self.trainer, self.eval_loader = trainer, eval_loader
        self.clock, self.accuracy, self.final, self.epoch = EpochClock(), Accuracy(trainer.bench), 0.0, 0

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.trainer.tally.start_epoch()
        self.clock.begin()

    def on_step_end(self, args, state, control, **kwargs):
        self.clock.step()

    def on_epoch_end(self, args, state, control, **kwargs):
        self.clock.close()
        self.final, self.epoch = self.accuracy.run(self.trainer.model, self.eval_loader), self.epoch + 1
        print(self.trainer.tally.line(self.epoch, self.final), flush=True)


def main(argv: list[str] | None = None) -> dict:
    bench, out = parse(argv, "the Hugging Face Trainer")
    cfg, model = bench.cfg, bench.parts.model
    batches = len(bench.loader(train=True))
    args = TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=cfg.batch_size, num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps or -1, max_grad_norm=cfg.max_grad_norm, seed=cfg.seed, use_cpu=True,
        save_strategy="epoch", save_total_limit=1, eval_strategy="no", report_to="none",
        remove_unused_columns=False, dataloader_num_workers=cfg.num_workers)
    trainer = BenchTrainer(bench, Tally(bench, batches), model=model, args=args, train_dataset=bench.parts.train_data,
                           data_collator=bench.parts.collate_fn or default_collate,
                           optimizers=bench.optimizer(model, batches))
    epochs = Epochs(trainer, bench.loader(train=False))
    trainer.add_callback(epochs)
    trainer.train()
    assert trainer.tally.steps == trainer.state.global_step  # one loss per optimizer step (no accumulation)
    return trainer.tally.result(bench, epochs.clock.close(), epochs.final)


if __name__ == "__main__":
    print(json.dumps(main()))
