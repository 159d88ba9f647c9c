"""A small job for the resume, preemption and non-finite tests: a CNN with dropout on shuffled digits, AdamW with
warm-up + cosine, accumulation 2, a checkpoint every 3 steps; every flag of TrainConfig works.

    python tests/scripts/resume_job.py --output-dir RUN [--kill-at-batch N] [--nan-at-step S] [--inf-grad-rank R]

--kill-at-batch N   SIGKILL this process (rank 0) when the N-th training micro-batch starts
--nan-at-step S     the loss of optimizer step S is NaN (every micro-batch of its window, on every process)
--inf-grad-rank R   with --nan-at-step S: instead, only process R gets an inf gradient at step S
--start-when PATH   before fit, touch PATH.ready-<pid> and wait for PATH to exist (two runs started at once)
--fill-disk-at-batch N  fill the disk holding the run folder when the N-th micro-batch starts (rank 0), once the
                    checkpoint written in the background is complete
--late-signal true  after fit, rank 0 sends itself SIGTERM: the signal a scheduler sends each machine in turn,
                    arriving once the run has stopped on another machine's (the process still exits 0)
--defer true        keep each step's non-finite and stop verdict on the device and read it a step later, as on a
                    GPU (the fused optimizer skips a non-finite update itself); the CPU reads it at once
"""

import os
import signal
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import TensorDataset

from accel_train import Task, fit, parse_config
from accel_train.tasks.vision import load_digits_tensors
from accel_train.checkpoint_writer import wait_for_writes
from accel_train.errors import exit_on_user_error
from accel_train.launch import leave


@dataclass
class Options:
    samples: int = 240  # digits used for training: 15 batches of 16, 8 optimizer steps per epoch
    kill_at_batch: int | None = None
    nan_at_step: int | None = None
    inf_grad_rank: int | None = None
    slow: float = 0.0  # seconds of sleep per micro-batch (gives a signal time to arrive mid-epoch)
    data: str | None = None  # a torch.save'd (images, labels) file instead of loading scikit-learn's digits
    start_when: str | None = None
    dropout: float = 0.3
    fill_disk_at_batch: int | None = None
    fill_file: str | None = None  # the file that fills the disk (on the run folder's filesystem)
    defer: bool = False
    late_signal: bool = False


class Injector(nn.Module):
    """Wraps the model: counts training micro-batches, and kills or poisons on request."""

    def __init__(self, model: nn.Module, opts: Options, grad_accum: int):
        super().__init__()
        self.model, self.opts, self.grad_accum = model, opts, grad_accum
        self.register_buffer("batches", torch.zeros((), dtype=torch.long))
        self.rank = int(os.environ.get("RANK", "0"))

    def forward(self, x):
        out = self.model(x)
        if not self.training:
            return out
        self.batches += 1
        seen = int(self.batches)
        if self.opts.slow:
            __import__("time").sleep(self.opts.slow)
        if self.opts.kill_at_batch is not None and seen == self.opts.kill_at_batch and self.rank == 0:
            wait_for_writes()  # the kill points name checkpoints; save_storm.py kills during background writes
            os.kill(os.getpid(), signal.SIGKILL)
        if self.opts.fill_disk_at_batch == seen and self.rank == 0:
            wait_for_writes()  # the disk fills between checkpoints, not during the previous one's background write
            fill_disk(self.opts.fill_file)
        step = (seen - 1) // self.grad_accum + 1
        if self.opts.nan_at_step == step:
            if self.opts.inf_grad_rank is None:
                return out * float("nan")
            if self.rank == self.opts.inf_grad_rank:
                out.register_hook(lambda g: g * float("inf"))
        return out


def fill_disk(path: str) -> None:
    """Write `path` until the filesystem is full (a real ENOSPC for whatever is written next)."""
    with open(path, "wb", buffering=0) as handle:
        for size in (1 << 20, 1 << 12, 1):
            try:
                while True:
                    handle.write(b"\0" * size)
            except OSError:
                continue


def build(opts: Options, grad_accum: int):
    images, labels = torch.load(opts.data, weights_only=True) if opts.data else load_digits_tensors()
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Dropout(opts.dropout), nn.Flatten(), nn.Linear(512, 10))
    data = TensorDataset(images[: opts.samples], labels[: opts.samples])
    val = TensorDataset(images[1500:1600], labels[1500:1600])
    return Injector(net, opts, grad_accum), data, val


if __name__ == "__main__":
    defaults = ["--optimizer", "adamw", "--lr", "0.01", "--scheduler", "cosine_warmup", "--warmup-steps", "4",
                "--grad-accum", "2", "--batch-size", "16", "--epochs", "5", "--checkpoint-every", "3",
                "--keep-checkpoints", "2", "--log-every", "1", "--progress", "false", "--max-grad-norm", "1.0",
                # bitwise equality needs the same thread count in both runs; the default follows the cores idle
                # at start (a CI run resumed on another count: last bits of the weights differed, 3e-8)
                "--num-threads", "1"]
    cfg, opts = parse_config(defaults + __import__("sys").argv[1:], options=Options)
    model, data, val = build(opts, cfg.grad_accum)
    if opts.start_when is not None:
        open(f"{opts.start_when}.ready-{os.getpid()}", "w").close()
        while not os.path.exists(opts.start_when):
            __import__("time").sleep(0.002)
    asked = []
    if opts.defer:  # as on a GPU: fit asks whether verdicts stay on the device
        __import__("sys").modules["accel_train.fit"].keeps_verdicts_on_device = lambda device: asked.append(1) or True
    with exit_on_user_error():  # a refusal or fault: one line, exit 2
        fit(model, data, val, config=cfg, task=Task("cross_entropy", ["accuracy"]))
    assert bool(asked) == opts.defer
    if opts.late_signal and int(os.environ.get("RANK", "0")) == 0:
        os.kill(os.getpid(), signal.SIGTERM)
    leave(0)  # a launched script ends without Python's teardown (see accel_train.launch.leave)
