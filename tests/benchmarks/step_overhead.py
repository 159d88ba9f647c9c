"""Per-step overhead of accel_train's loop over a hand-written twin of the same step: the same model, batches (in
the same order), loss, gradient normalisation, clipping, optimizer and schedule, so that the two give bitwise the
same loss at every step in fp32. Both run in this process, interleaved (twin, accel_train, twin, ...).

    python tests/benchmarks/step_overhead.py --job small_steps --epochs 5 --runs 3

A step's time is the time between the ends of two consecutive optimizer steps of one epoch (torch's global
optimizer step post-hook, registered from outside the package; the first step of each epoch is left out, since
its interval holds the previous epoch's validation and checkpoint). accel_train runs as `accel-train train` does
(`parse_config`, the job's `build`, `fit` with its defaults: checkpoints, progress bar, non-finite guard), with the
job's task wrapped to record each step's loss. Target: accel_train's median step <= 1.02 x the twin's + 100 us.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate.utils import set_seed
from torch.optim.optimizer import register_optimizer_step_post_hook

from accel_train import fit
from accel_train.config import parse_config
from accel_train.job import Job
from accel_train.optim import build_optimizer, build_scheduler, total_steps
from accel_train.speed import optimizer_kwargs
from accel_train.task import Task
from bench_jobs import job_args



class StepClock:
    """perf_counter at the end of every optimizer step of any optimizer (torch's global post-hook)."""

    def __enter__(self) -> StepClock:
        self.ends: list[float] = []
        self.handle = register_optimizer_step_post_hook(
            lambda *_: self.ends.append(time.perf_counter()))
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()

    def step_times(self, per_epoch: int) -> list[float]:
        """Step intervals within epochs (step k's end minus step k-1's; k the first of an epoch left out)."""
        return [self.ends[k] - self.ends[k - 1] for k in range(1, len(self.ends)) if k % per_epoch]


class Recorded(Task):
    """The job's task, recording each micro-batch's summed loss (what the loop back-propagates)."""

    def __init__(self, task: Task, record: list):
        self.__dict__.update(task.__dict__)
        self.record = record

    def losses(self, output, targets):
        out = super().losses(output, targets)
        if torch.is_grad_enabled():  # training batches only, not validation; summed as the loop sums them, later
            self.record.append(out.losses.detach())
        return out


def build(job: str, epochs: int, out: Path, extra: tuple[str, ...] = ()):
    flags = ["--epochs", str(epochs), "--output-dir", str(out), "--num-threads", str(torch.get_num_threads())]
    cfg, spec = parse_config([*job_args(job), *flags, *extra], options=Job)
    set_seed(cfg.seed)  # as `accel-train train`: the initial weights depend on the seed only
    return cfg, spec.build(cfg.seed)


def run_accel_train(job: str, epochs: int, out: Path, extra: tuple[str, ...] = ()
                    ) -> tuple[list[torch.Tensor], list[float], int]:
    """`extra`: more `accel-train train` words for accel_train's run only (a default turned off, say)."""
    cfg, parts = build(job, epochs, out, extra)
    losses: list[torch.Tensor] = []
    with StepClock() as clock:
        fit(parts.model, parts.train_data, parts.eval_data, config=cfg, task=Recorded(parts.task, losses),
            collate_fn=parts.collate_fn, processor=parts.processor, options=None)
    per_epoch = -(-len(parts.train_data) // cfg.batch_size)
    return losses, clock.step_times(per_epoch), per_epoch


def run_twin(job: str, epochs: int, out: Path) -> tuple[list[torch.Tensor], list[float], int]:
    """The step accel_train takes, written by hand: summed per-sample loss, gradients divided by the batch's
    samples, clipping, step, schedule, zero_grad; the epoch's loss and accuracy kept on the side."""
    cfg, parts = build(job, epochs, out)
    model = parts.model
    set_seed(cfg.seed)  # fit seeds again before its loaders: the dropout masks follow from here
    order = torch.Generator()  # each epoch's order: a permutation seeded with seed + epoch, as Accelerate's
    sampler = torch.utils.data.RandomSampler(parts.train_data, generator=order)  # seedable sampler draws it
    loader = torch.utils.data.DataLoader(parts.train_data, batch_size=cfg.batch_size, sampler=sampler,
                                         generator=torch.Generator())  # its worker seed: not from the global RNG
    eval_loader = torch.utils.data.DataLoader(parts.eval_data, 256, generator=torch.Generator())  # as above
    optimizer = build_optimizer(cfg, model, **optimizer_kwargs(cfg, "cpu"))  # fit's default kernels
    scheduler = build_scheduler(cfg, optimizer, total_steps(cfg, len(loader)))
    params = [p for p in model.parameters() if p.requires_grad]
    losses = []
    with StepClock() as clock:
        for epoch in range(cfg.epochs):
            model.train()
            order.manual_seed(cfg.seed + epoch)
            loss_sum, correct = torch.zeros(()), torch.zeros((), dtype=torch.long)
            for x, y in loader:
                logits = model(x)
                loss = F.cross_entropy(logits, y, reduction="none").sum()
                loss.backward()
                torch._foreach_mul_([p.grad for p in params], 1 / len(y))
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(loss.detach())
                loss_sum += loss.detach()
                correct += (logits.argmax(1) == y).sum()
            with torch.no_grad():  # validation, outside the timed steps
                model.eval()
                sum(int((model(x).argmax(1) == y).sum()) for x, y in eval_loader)
    return losses, clock.step_times(len(loader)), len(loader)


def measure(job: str = "small_steps", epochs: int = 5, runs: int = 3, threads: int = 1,
            accel_args: tuple[str, ...] = ()) -> dict:
    """Interleaved runs on `threads` threads; per run the median step time of each; the losses of every pair
    compared bitwise."""
    twin_medians, accel_medians, twin_fast, accel_fast, equal = [], [], [], [], True
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for run in range(runs):
                twin_losses, twin_times, per_epoch = run_twin(job, epochs, Path(tmp) / f"twin{run}")
                accel_losses, accel_times, _ = run_accel_train(job, epochs, Path(tmp) / f"accel{run}", accel_args)
                accel_losses = [losses.sum() for losses in accel_losses]  # the op `Output.total` runs
                equal = equal and len(twin_losses) == len(accel_losses) and torch.equal(
                    torch.stack(twin_losses), torch.stack(accel_losses))
                twin_medians.append(statistics.median(twin_times))
                accel_medians.append(statistics.median(accel_times))
                twin_fast.append(statistics.quantiles(twin_times, n=10)[0])  # the 10th percentile: the steps
                accel_fast.append(statistics.quantiles(accel_times, n=10)[0])  # least slowed by other processes
    finally:
        torch.set_num_threads(before)
    twin, accel = statistics.median(twin_medians), statistics.median(accel_medians)
    return {"job": job, "accel_args": list(accel_args), "epochs": epochs, "runs": runs, "steps": len(twin_losses),
            "steps_per_epoch": per_epoch,
            "losses_bitwise_equal": equal, "twin_step_s": twin, "accel_train_step_s": accel,
            "overhead_s": accel - twin, "overhead_ratio": accel / twin, "bound_s": 1.02 * twin + 100e-6,
            "within_target": accel <= 1.02 * twin + 100e-6, "twin_medians_s": twin_medians,
            "accel_train_medians_s": accel_medians, "twin_p10_s": statistics.median(twin_fast),
            "accel_train_p10_s": statistics.median(accel_fast)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--job", default="small_steps", choices=["digits", "small_steps"])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="write the figures here as JSON")
    parser.add_argument("--accel-args", default="", help="more `accel-train train` words for accel_train's runs "
                        "only, as one string (for example '--progress false': a default turned off)")
    args = parser.parse_args(argv)
    figures = measure(args.job, args.epochs, args.runs, args.threads, tuple(args.accel_args.split()))
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=1) + "\n")
    print(report(figures))
    return figures


def report(f: dict) -> str:
    verdict = "within" if f["within_target"] else "MISSES"
    changed = f" (accel_train with {' '.join(f['accel_args'])})" if f.get("accel_args") else ""
    return (f"{f['job']}{changed}: {f['runs']} interleaved runs of {f['epochs']} epochs x {f['steps_per_epoch']} "
            f"steps, "
            f"median step: twin {f['twin_step_s'] * 1e3:.3f} ms, accel_train {f['accel_train_step_s'] * 1e3:.3f} ms "
            f"({f['overhead_s'] * 1e6:+.0f} us, {f['overhead_ratio']:.3f}x); bound 1.02 x twin + 100 us = "
            f"{f['bound_s'] * 1e3:.3f} ms: {verdict} the target; 10th percentile: twin {f['twin_p10_s'] * 1e3:.3f} ms, "
            f"accel_train {f['accel_train_p10_s'] * 1e3:.3f} ms; per-step losses bitwise equal: "
            f"{'yes' if f['losses_bitwise_equal'] else 'NO'}")


if __name__ == "__main__":
    sys.exit(0 if main()["losses_bitwise_equal"] else 1)
