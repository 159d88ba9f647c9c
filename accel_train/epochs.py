"""The run's outer loop around `loop.train_one_epoch`: epochs, logging, step and epoch checkpoints, validation,
the best model, early stopping, preemption, and the summary. `fit.py` builds the `Run` this drives; each concern
around the loop is a small object that owns its cadence (`StepLog.due`, `Checkpointer.due`, `Monitor.observe`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import is_compiled_module

from . import per_class
from .checkpoint import Checkpointer, Progress, StopRequest
from .config import TrainConfig
from .data import TrainBatches
from .ema import NoEMA
from .errors import UserError
from .gradients import GradientWindow
from .logs import StepLog, epoch_line, summary_line
from .loop import evaluate, train_one_epoch
from .metrics import Meter
from .monitor import Performance, verdict
from .plan import ComputeDtype
from .plot_worker import PlotWorker
from .run_folder import write_summary
from .task import Task
from .tidy import folder_bytes, share_weights, tidy_checkpoints, unshare_weights
from .tracking import log_kwargs

LOWER_IS_BETTER = ("loss", "mse", "mae", "perplexity", "error")


@dataclass
class Monitor:
    """The metric that picks the best checkpoint, steps the plateau schedule and ends the run early."""

    name: str
    mode: str  # "max" or "min"
    min_delta: float = 0.0  # improvement that resets early stopping
    patience: int | None = None  # epochs without such an improvement before early stopping
    plateau: Any = None  # a ReduceLROnPlateau stepped with the metric, or None

    @classmethod
    def for_task(cls, cfg: TrainConfig, task: Task) -> Monitor:
        """--monitor, or the task's first named metric, else the loss; min for losses and errors, else max."""
        specs = task.metric_specs
        names = [specs] if isinstance(specs, str) else [s for s in (specs or []) if isinstance(s, str)]
        name = cfg.monitor or (names[0] if names else "loss")
        mode = cfg.monitor_mode or ("min" if name.endswith(LOWER_IS_BETTER) else "max")
        return cls(name, mode, cfg.min_delta, cfg.early_stopping)

    def observe(self, progress: Progress, values: dict[str, float], split: str, checkpoint: str) -> bool:
        """Record this epoch's value in `progress` (best metric, epoch and checkpoint, epochs without improvement);
        True when early stopping ends the run."""
        if self.name not in values:
            raise UserError(f"--monitor {self.name} is not among the {split} metrics ({', '.join(values)}). "
                            "Set --monitor to one of them.")
        value = values[self.name]
        if self.plateau is not None:
            self.plateau.step(value)
        progress.bad_epochs = 0 if progress.improved(value, self.mode, self.min_delta) else progress.bad_epochs + 1
        if progress.improved(value, self.mode):
            progress.best_metric, progress.best_epoch, progress.best_checkpoint = value, progress.epoch, checkpoint
        return bool(self.patience) and progress.bad_epochs >= self.patience


@dataclass(kw_only=True)
class Run:
    """Everything one run holds, built once by `fit` and driven by `train_epochs`."""

    accelerator: Any
    cfg: TrainConfig
    run_dir: Path
    model: Any
    task: Task
    optimizer: Any
    scheduler: Any
    grads: GradientWindow
    meter: Meter
    batches: TrainBatches
    eval_loader: Any
    steps: int  # optimizer steps of the whole run
    steps_per_epoch: int | None  # None for a stream
    monitor: Monitor
    progress: Progress
    checkpointer: Checkpointer
    stop: StopRequest
    log: StepLog
    perf: Performance
    compute_dtype: ComputeDtype
    precision: str  # the precision in effect, as the plan says it
    device: str
    ema: NoEMA = field(default_factory=NoEMA)  # the EMA of the weights; `ema.for_eval` picks the model to validate


def train_epochs(run: Run) -> str | None:
    """Epochs until done, early-stopped or asked to stop; returns the stop reason, if any."""
    progress = run.progress
    epochs = run.cfg.epochs if run.cfg.max_steps is None else math.inf
    try:
        while progress.epoch < epochs and progress.step < run.steps:
            run.batches.start_epoch(progress.epoch, skip=progress.batch_in_epoch)
            if progress.batch_in_epoch == 0:
                run.meter.reset()
            if _train_epoch(run):
                return run.stop.reason()
            if _end_epoch(run):
                break
            if run.grads.stop:  # asked on the epoch's last step: the epoch-end checkpoint is the one to resume
                run.checkpointer.wait()
                _report_stop(run, run.checkpointer.latest())
                return run.stop.reason()
    except BaseException:
        _wait_quietly(run.checkpointer)  # the write in flight completes; the run's own error is the one raised
        raise
    finally:
        run.perf.close()
        run.log.close()
    run.checkpointer.wait()
    return None


def _wait_quietly(checkpointer: Checkpointer) -> None:
    try:
        checkpointer.wait()
    except Exception:
        pass


def _train_epoch(run: Run) -> bool:
    """One epoch (or what is left of it); True when a stop was requested and a checkpoint written."""
    progress = run.progress
    run.perf.start_epoch(progress.step, run.meter.totals() if progress.batch_in_epoch else None)  # resumed: counts so far
    tick = time.perf_counter()
    run.perf.flops.begin()  # counts the first step's FLOPs, once
    for _ in train_one_epoch(run.accelerator, run.model, run.task, run.batches, run.optimizer, run.scheduler,
                             run.grads, run.meter):
        run.perf.flops.end()
        progress.step += 1
        progress.batch_in_epoch = run.batches.done_in_epoch
        run.stop.step = progress.step
        _count_skipped(run)
        run.log.advance()
        if run.log.due(progress.step):
            _settle(run)
            run.log.step(progress.step, _step_values(run))  # the only host reads of a step
        if run.batches.current.end_of_dataloader or progress.step >= run.steps:
            break  # the epoch-end checkpoint follows
        if run.grads.stop or run.checkpointer.due(progress.step):
            _settle(run)
            _add_train_time(run, time.perf_counter() - tick)
            tick = time.perf_counter()
            path = run.checkpointer.save(run.accelerator, progress, f"step_{progress.step:07d}", run.model, run.meter)
            run.perf.clock.pause(time.perf_counter() - tick)  # writing a checkpoint is not step time
            if run.grads.stop:
                run.checkpointer.wait()
                _report_stop(run, path)
                return True
    _add_train_time(run, time.perf_counter() - tick)
    return False


def _add_train_time(run: Run, seconds: float) -> None:
    run.progress.train_time_s += seconds
    run.perf.add_train_time(seconds)


def _count_skipped(run: Run) -> None:
    for ago in run.grads.guard.take_skipped():
        run.progress.skipped_steps += 1
        run.log.write(f"warning: step {run.progress.step - ago}: non-finite loss or gradient norm; step skipped "
                      f"({run.progress.skipped_steps} so far)")


def _settle(run: Run) -> None:
    """Act on a verdict kept on the device (see gradients.NonFiniteGuard) before anything reads the run's state."""
    run.grads.settle()
    _count_skipped(run)


def _step_values(run: Run) -> dict[str, Any]:
    """What a logging step records: loss, the LR of every parameter group, gradient norm, speed and memory."""
    totals = run.meter.totals()  # one host read (and one all-reduce) for the loss and the counts
    groups = run.optimizer.param_groups
    values = {"train/loss": run.meter.interval_loss(totals), "lr": groups[0]["lr"],
              **{f"lr_group_{i}": group["lr"] for i, group in enumerate(groups) if i},
              "epoch": run.progress.epoch + 1}
    if run.grads.norm is not None:
        values["grad_norm"] = float(run.grads.norm)
    if run.progress.skipped_steps:
        values["skipped_steps"] = run.progress.skipped_steps
    tokens = isinstance(run.meter.units, torch.Tensor)  # the task counts loss units (target tokens) per sample
    return {**values, **run.perf.step_values(run.progress.step, totals, tokens)}


def _report_stop(run: Run, path) -> None:
    run.log.write(f"stopped by {run.stop.reason()} after step {run.progress.step}: checkpoint {path}. "
                  f"Resume with --resume auto --output-dir {run.run_dir}")


def _end_epoch(run: Run) -> bool:
    """Validate, pick the best, checkpoint; True when early stopping ends the run."""
    progress, accelerator = run.progress, run.accelerator
    _settle(run)
    train, samples = run.meter.compute()
    val = evaluate(accelerator, run.ema.for_eval(run.model), run.task, run.eval_loader)
    progress.samples += samples
    progress.epoch += 1
    progress.batch_in_epoch = 0
    name = f"step_{progress.step:07d}"
    early_stop = run.monitor.observe(progress, val or train, "validation" if val else "training", name)
    record = {"epoch": progress.epoch, **{f"train/{k}": v for k, v in train.items()},
              **{f"val/{k}": v for k, v in val.items()}, "lr": run.optimizer.param_groups[0]["lr"]}
    progress.history.append(record)
    record = {**record, **run.perf.epoch_values(progress.step, run.steps)}
    accelerator.log(record, step=progress.step, log_kwargs=log_kwargs("epoch"))
    if accelerator.is_main_process:
        per_class.write_epoch(run.run_dir, run.task, progress.epoch)  # classes/epoch_NNN.json and .csv
    run.log.write(epoch_line(record, math.ceil(run.steps / run.steps_per_epoch) if run.steps_per_epoch else None))
    if line := verdict(record.get("perf/epoch_data_wait"), run.cfg.num_workers):
        run.log.write(line)
    run.checkpointer.save(accelerator, progress, name, run.model, run.meter)
    # every process holds the same gathered metrics; the trigger makes the decision one collective fact
    if accelerator.is_main_process and early_stop:
        accelerator.set_trigger()
    if accelerator.check_trigger():
        run.log.write(f"early stopping: {run.monitor.name} has not improved by {run.monitor.min_delta} for "
                      f"{progress.bad_epochs} epochs (best {progress.best_metric:.4f} at epoch {progress.best_epoch})")
        return True
    return False


def finish(run: Run, started: float, stopped: str | None, processor: Any, plotter: PlotWorker) -> dict[str, Any]:
    """Export the final (or best) weights and the processor, write `summary.json`, draw the figures (`plotter`,
    while the weights are exported), print the summary line."""
    accelerator, progress = run.accelerator, run.progress
    plotter.draw(run.run_dir)  # metrics.jsonl and classes/ are complete
    run.checkpointer.wait()
    accelerator.wait_for_everyone()  # the main process's write thread has published the last checkpoint
    best = progress.best_checkpoint and run.checkpointer.root / progress.best_checkpoint
    if run.cfg.restore_best and best and not stopped:
        accelerator.load_state(str(best))  # the exported weights below are then the best ones
    summary = _summary(run, time.perf_counter() - started, stopped, best)
    if not stopped:
        if accelerator.is_main_process:
            unshare_weights(run.run_dir)
        accelerator.wait_for_everyone()
        model = run.ema.for_eval(run.model)  # --eval-ema: the averaged weights are the model
        if is_compiled_module(model):  # export the model's own names, not torch.compile's `_orig_mod.` ones
            model = accelerator.unwrap_model(model, keep_torch_compile=False)
        accelerator.save_model(model, str(run.run_dir), safe_serialization=True)
        _export_pretrained(accelerator, model, processor, run.run_dir / "model")
    if accelerator.is_main_process:
        if not stopped:
            tidy_checkpoints(run.checkpointer.root, run.cfg.keep_checkpoints, progress.best_checkpoint,
                             run.cfg.save_optimizer)
            share_weights(run.run_dir)
        write_summary(run.run_dir, summary)
        plotter.finish(run.run_dir, accelerator.print)  # plots/*.png
        summary["run_dir_bytes"] = folder_bytes(run.run_dir)
        write_summary(run.run_dir, summary)
    accelerator.print(summary_line(summary))
    return summary


def _summary(run: Run, wall: float, stopped: str | None, best) -> dict[str, Any]:
    progress = run.progress
    history = progress.history[-1] if progress.history else {}
    return {
        "run_dir": str(run.run_dir), "monitor": run.monitor.name, "monitor_mode": run.monitor.mode,
        "best_epoch": progress.best_epoch, "best_metric": progress.best_metric,
        "best_checkpoint": str(best) if best else None,
        "final_train": {k[6:]: v for k, v in history.items() if k.startswith("train/")},
        "final_val": {k[4:]: v for k, v in history.items() if k.startswith("val/")},
        "epochs": progress.epoch, "steps": progress.step, "samples": progress.samples,
        "skipped_steps": progress.skipped_steps, "stopped": stopped,
        "wall_time_s": wall, "train_time_s": progress.train_time_s,
        "checkpoint_s": run.checkpointer.saving_s,  # time the loop spent on checkpoints (this process, this part)
        "samples_per_s": progress.samples / progress.train_time_s if progress.train_time_s else None,
        "processes": run.accelerator.num_processes, "precision": run.precision,
        "compute_dtype": run.compute_dtype.dtype, "device": run.device,
        "performance": run.perf.summary(),
    }


def _export_pretrained(accelerator, model, processor: Any, folder: Path) -> None:
    """Hugging Face models (and their tokenizer/processor) also go out as `save_pretrained` output, loadable with
    the model class's own `from_pretrained`."""
    unwrapped = accelerator.unwrap_model(model)
    if not hasattr(unwrapped, "save_pretrained"):
        return
    state = accelerator.get_state_dict(model)  # every process takes part (sharded models gather here)
    if accelerator.is_main_process:
        unwrapped.save_pretrained(folder, state_dict=state, safe_serialization=True)
        if processor is not None:
            processor.save_pretrained(folder)
    accelerator.wait_for_everyone()
