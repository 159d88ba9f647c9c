"""The LR finder: train a copy of the model for a few hundred optimizer steps while the LR grows exponentially from
`start_lr` to `end_lr`, record the loss of every step, and suggest the LR where the loss falls fastest.

    accel-train lr-find --config JOB.yaml [--start-lr 1e-7 --end-lr 10 --num-steps 200 --out DIR]
    accelerate launch --config_file launch_configs/cpu_ddp.yaml -m accel_train lr-find --config JOB.yaml

    from accel_train import lr_find
    result = lr_find(model, train_data, config=cfg)   # result.suggestion, result.plot

The sweep is the run's own training step (`loop.train_step`: accumulation, clipping, the job's loss and recipes,
every process's samples), so the curve is the one training would see. Each step's loss is the mean over all
processes, the same on every process; the main process alone computes the suggestion and writes `lr_find.png`
(the curve, the suggestion marked) and `lr_find.json` into `out`, and every process returns that one result.
Nothing else is written: no run folder, no checkpoint, and the model passed in keeps its weights. The sweep ends
early once the loss diverges (above 4x its lowest smoothed value, or not finite).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .config import TrainConfig
from .errors import UserError


@dataclass
class LRFindResult:
    """The sweep: the LR and loss of each optimizer step, the smoothed loss, the suggested LR and the plot's path."""

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggestion: float | None  # None when the loss never fell
    plot: str | None = None


def smooth(losses: list[float], window: int | None = None) -> list[float]:
    """A centred moving average (no lag, unlike a running average, so the steepest point does not shift)."""
    import numpy as np

    window = window or max(5, len(losses) // 20) | 1
    values = np.asarray(losses, dtype=float)
    padded = np.pad(values, window // 2, mode="edge")
    return np.convolve(padded, np.ones(window) / window, mode="valid").tolist()


def suggest(lrs: list[float], smoothed: list[float], skip: int = 5) -> float | None:
    """The LR of the steepest descent of the smoothed loss against log(LR), before the loss's lowest point."""
    import numpy as np

    lowest = int(np.argmin(smoothed))
    if lowest <= skip + 1:
        return None
    slope = np.gradient(np.asarray(smoothed), np.log10(np.asarray(lrs)))
    return float(lrs[skip + int(np.argmin(slope[skip:lowest]))])


def plot(result: LRFindResult, path: Path) -> None:
    """The loss curve (raw and smoothed) against the LR on a log axis, the suggestion marked; matplotlib's Agg
    canvas directly, so no process-wide backend is chosen."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.plot(result.lrs, result.losses, color="0.75", linewidth=1, label="loss per step")
    axes.plot(result.lrs, result.smoothed, color="C0", linewidth=2, label="smoothed")
    if result.suggestion is not None:
        axes.axvline(result.suggestion, color="C3", linestyle="--", label=f"suggested lr {result.suggestion:.2e}")
    axes.set(xscale="log", xlabel="learning rate", ylabel="training loss", title="LR finder")
    low, high = min(result.smoothed), result.smoothed[0]
    axes.set_ylim(low - 0.1 * (high - low + 1e-12), max(high, low) + 0.6 * (high - low + 1e-12))
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)


class _Exponential:
    """LR multiplier of step k: (end / start) ** (k / (steps - 1)); a class, so that it pickles."""

    def __init__(self, ratio: float, steps: int):
        self.ratio, self.steps = ratio, steps

    def __call__(self, step: int) -> float:
        return self.ratio ** (min(step, self.steps - 1) / max(1, self.steps - 1))


def lr_find(model: torch.nn.Module, train_data: Any, *, config: TrainConfig | None = None,
            loss: str | Callable | None = "cross_entropy", task: Any = None, collate_fn: Callable | None = None,
            start_lr: float = 1e-7, end_lr: float = 10.0, num_steps: int = 200,
            out: str | Path | None = None) -> LRFindResult:
    """Sweep the LR exponentially from `start_lr` to `end_lr` over `num_steps` optimizer steps of `config`'s
    training (optimizer, batch, accumulation, clipping, loss recipes) on a copy of `model`; return the curve and
    the suggested LR, and write `lr_find.png` and `lr_find.json` into `out` (default `runs/<name>-lr-find`)."""
    from .launch import make_accelerator, set_threads, shutdown

    cfg = config or TrainConfig()
    if not 0 < start_lr < end_lr or num_steps < 10:
        raise UserError(f"the LR finder needs 0 < start_lr < end_lr and num_steps >= 10 (got {start_lr}, {end_lr}, "
                        f"{num_steps}).")
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        raise UserError("the LR finder draws its curve with matplotlib: pip install matplotlib, or accel_train[report].")
    folder = Path(out) if out is not None else Path("runs") / f"{cfg.name}-lr-find"
    set_threads(cfg.num_threads)
    accelerator, _ = make_accelerator(cfg)
    try:
        lrs, losses = _sweep(accelerator, dataclasses.replace(cfg, lr=start_lr), copy.deepcopy(model), train_data,
                             task, loss, collate_fn, end_lr / start_lr, num_steps)
        result: list[Any] = [None]
        if accelerator.is_main_process:  # computed once; every process returns it
            result[0] = _report(lrs, losses, folder)
        if accelerator.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            broadcast_object_list(result, from_process=0)
        return result[0]
    finally:
        shutdown(accelerator)


def _sweep(accelerator, cfg: TrainConfig, model, train_data, task, loss, collate_fn, ratio: float,
           steps: int) -> tuple[list[float], list[float]]:
    """The training steps of the sweep; (LR, loss over all processes) of each optimizer step."""
    from .loop import train_step

    model, task, optimizer, scheduler, grads, meter, batches = _prepare(
        accelerator, cfg, model, train_data, task, loss, collate_fn, _Exponential(ratio, steps))
    lrs: list[float] = []
    losses: list[float] = []
    running, best, epoch = 0.0, math.inf, 0
    model.train()
    while True:
        batches.start_epoch(epoch)
        epoch += 1
        for batch, valid in batches:
            lr = optimizer.param_groups[0]["lr"]  # the LR of the optimizer step this micro-batch may close
            out, loss_sum, count = train_step(accelerator, model, task, batch, optimizer, scheduler, grads, valid)
            meter.update(out, loss_sum, count, valid)
            if not accelerator.sync_gradients:
                continue
            lrs.append(lr)
            losses.append(meter.interval_loss())  # the same on every process: they stop together
            running = 0.9 * running + 0.1 * losses[-1]
            now = running / (1 - 0.9 ** len(losses))  # running mean, corrected for its start at 0
            best = min(best, now)
            if len(losses) >= steps or not math.isfinite(now) or now > 4 * best:
                return lrs, losses


def _prepare(accelerator, cfg: TrainConfig, model, train_data, task, loss, collate_fn, multiplier: _Exponential):
    """The sweep's parts, built as `fit` builds them: the run's task (loss recipes, mixing), loader, optimizer."""
    from accelerate.utils import set_seed
    from torch.optim.lr_scheduler import LambdaLR

    from .data import TrainBatches, dataset_labels, make_loader
    from .gradients import GradientWindow, NonFiniteGuard
    from .metrics import Meter, MetricSet
    from .optim import build_optimizer
    from .recipes import for_run
    from .task import Task

    set_seed(cfg.seed)
    task = for_run(cfg, (task or Task(loss, ())).for_run(dataset_labels(train_data)), model).task
    loader = make_loader(train_data, batch_size=cfg.batch_size, shuffle=True, collate_fn=collate_fn,
                         num_workers=cfg.num_workers, seed=cfg.seed)
    model, optimizer, loader = accelerator.prepare(model, build_optimizer(cfg, model), loader)
    scheduler = LambdaLR(optimizer.optimizer, multiplier)
    grads = GradientWindow(accelerator, model, cfg.max_grad_norm, cfg.clip_value, guard=NonFiniteGuard("off"),
                           allow_unused=cfg.find_unused_parameters)
    return (model, task, optimizer, scheduler, grads, Meter(accelerator, MetricSet(None)),
            TrainBatches(loader, accelerator, cfg.seed))


def _report(lrs: list[float], losses: list[float], folder: Path) -> LRFindResult:
    """Smooth, suggest, and write the plot and the numbers (main process)."""
    from .checkpoint import write_json

    finite = [i for i, value in enumerate(losses) if math.isfinite(value)]
    lrs, losses = [lrs[i] for i in finite], [losses[i] for i in finite]
    smoothed = smooth(losses)
    result = LRFindResult(lrs, losses, smoothed, suggest(lrs, smoothed))
    folder.mkdir(parents=True, exist_ok=True)
    plot(result, folder / "lr_find.png")
    result.plot = str(folder / "lr_find.png")
    write_json(folder / "lr_find.json", dataclasses.asdict(result))
    return result


@dataclass
class FinderOptions:
    """The flags of `accel-train lr-find` besides the job's own."""

    start_lr: float = 1e-7  # the sweep's first LR
    end_lr: float = 10.0  # the sweep's last LR (it stops earlier once the loss diverges)
    num_steps: int = 200  # optimizer steps of the sweep
    out: str | None = None  # folder for lr_find.png and lr_find.json; default runs/<name>-lr-find


def main(argv: list[str]) -> int:
    """`accel-train lr-find --config JOB.yaml [--start-lr 1e-7 --end-lr 10 --num-steps 200 --out DIR]`."""
    import argparse
    import os

    from accelerate.utils import set_seed

    from .config import parse_config
    from .job import Job

    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False, exit_on_error=False)
    for option in dataclasses.fields(FinderOptions):
        parser.add_argument(f"--{option.name.replace('_', '-')}", f"--{option.name}", dest=option.name,
                            default=option.default, type=str if option.default is None else type(option.default))
    try:
        own, rest = parser.parse_known_args(argv)
    except argparse.ArgumentError as error:
        raise UserError(f"lr-find: {error}") from None
    if "-h" in rest or "--help" in rest:
        print("accel-train lr-find: " + ", ".join(f"--{f.name.replace('_', '-')} (default {f.default})"
                                                  for f in dataclasses.fields(FinderOptions)) + "; and the job's keys:")
    cfg, job = parse_config(rest, options=Job)
    set_seed(cfg.seed)  # the model's initial weights, as `accel-train train` makes them
    parts = job.build(cfg.seed)
    result = lr_find(parts.model, parts.train_data, config=cfg, task=parts.task, collate_fn=parts.collate_fn,
                     **vars(own))
    if os.environ.get("RANK", "0") != "0":  # every process has the one result: the main process says it
        return 0
    if result.suggestion is None:
        print(f"lr-find: the loss did not fall between {own.start_lr:g} and {own.end_lr:g}; curve in {result.plot}")
    else:
        print(f"lr-find: suggested lr {result.suggestion:.3g} (steepest descent of the loss); curve in {result.plot}")
    return 0
