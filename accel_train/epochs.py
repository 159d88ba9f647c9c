"""The run's outer loop around `loop.train_one_epoch`: epochs, logging, step and epoch checkpoints, validation,
best model, early stopping, preemption, and the summary. `fit.py` builds the `Run` this drives."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import report
from .errors import UserError
from .loop import evaluate, train_one_epoch
from .run import write_summary

if TYPE_CHECKING:
    from .fit import Run


def train_epochs(run: Run) -> str | None:
    """Epochs until done, early-stopped or asked to stop; returns the stop reason, if any."""
    cfg, progress, accelerator = run.cfg, run.progress, run.accelerator
    bar = report.progress_bar(accelerator, cfg, run.steps, progress.step)
    epochs = cfg.epochs if cfg.max_steps is None else math.inf
    try:
        while progress.epoch < epochs and progress.step < run.steps:
            run.batches.start_epoch(progress.epoch, skip=progress.batch_in_epoch)
            if progress.batch_in_epoch == 0:
                run.meter.reset()
            if _train_epoch(run, bar):
                return run.stop.reason()
            if _end_epoch(run, bar):
                break
            if run.grads.stop:  # asked on the epoch's last step: the epoch-end checkpoint is the one to resume
                _report_stop(run, bar, run.checkpointer.latest())
                return run.stop.reason()
    finally:
        bar.close()
    return None


def _train_epoch(run: Run, bar) -> bool:
    """One epoch (or what is left of it); True when a stop was requested and a checkpoint written."""
    cfg, progress, accelerator = run.cfg, run.progress, run.accelerator
    tick = time.perf_counter()
    for _ in train_one_epoch(accelerator, run.model, run.task, run.batches, run.optimizer, run.scheduler,
                             run.grads, run.meter):
        progress.step += 1
        progress.batch_in_epoch = _batches_done(run)
        run.stop.step = progress.step
        if not run.grads.ok:
            progress.skipped_steps += 1
            bar.write(f"warning: step {progress.step}: non-finite loss or gradient norm; step skipped "
                      f"({progress.skipped_steps} so far)")
        bar.update(1)
        if progress.step % cfg.log_every == 0:
            _log_step(run, bar)
        if run.batches.current.end_of_dataloader or progress.step >= run.steps:
            break  # the epoch-end checkpoint follows
        if run.grads.stop or (cfg.checkpoint_every and progress.step % cfg.checkpoint_every == 0):
            progress.train_time_s += time.perf_counter() - tick
            tick = time.perf_counter()
            path = run.checkpointer.save(accelerator, progress, f"step_{progress.step:07d}", run.model, run.meter)
            if run.grads.stop:
                _report_stop(run, bar, path)
                return True
    progress.train_time_s += time.perf_counter() - tick
    return False


def _report_stop(run: Run, bar, path) -> None:
    bar.write(f"stopped by {run.stop.reason()} after step {run.progress.step}: checkpoint {path}. "
              f"Resume with --resume auto --output-dir {run.run_dir}")


def _batches_done(run: Run) -> int:
    """Micro-batches of the current epoch trained so far, on this process."""
    return run.accelerator.step if not run.batches.current.end_of_dataloader else 0


def _end_epoch(run: Run, bar) -> bool:
    """Validate, pick the best, checkpoint; True when early stopping ends the run."""
    cfg, progress, accelerator = run.cfg, run.progress, run.accelerator
    train, samples = run.meter.compute()
    val = evaluate(accelerator, run.model, run.task, run.eval_loader)
    progress.samples += samples
    progress.epoch += 1
    progress.batch_in_epoch = 0
    watched = val or train
    if run.monitor not in watched:
        raise UserError(f"--monitor {run.monitor} is not among the {'validation' if val else 'training'} metrics "
                        f"({', '.join(watched)}). Set --monitor to one of them.")
    value = watched[run.monitor]
    if run.plateau is not None:
        run.plateau.step(value)
    name = f"step_{progress.step:07d}"
    progress.bad_epochs = 0 if progress.improved(value, run.mode, cfg.min_delta) else progress.bad_epochs + 1
    if progress.improved(value, run.mode):
        progress.best_metric, progress.best_epoch, progress.best_checkpoint = value, progress.epoch, name
    record = {"kind": "epoch", "epoch": progress.epoch, **{f"train/{k}": v for k, v in train.items()},
              **{f"val/{k}": v for k, v in val.items()}, "lr": run.optimizer.param_groups[0]["lr"]}
    progress.history.append(record)
    accelerator.log(record, step=progress.step)
    epochs = math.ceil(run.steps / run.plan["steps_per_epoch"]) if run.plan["steps_per_epoch"] else None
    bar.write(report.epoch_line(record, epochs))
    run.checkpointer.save(accelerator, progress, name, run.model, run.meter)
    # every process holds the same gathered metrics; the trigger makes the decision one collective fact
    if accelerator.is_main_process and cfg.early_stopping and progress.bad_epochs >= cfg.early_stopping:
        accelerator.set_trigger()
    if accelerator.check_trigger():
        bar.write(f"early stopping: {run.monitor} has not improved by {cfg.min_delta} for {progress.bad_epochs} "
                  f"epochs (best {progress.best_metric:.4f} at epoch {progress.best_epoch})")
        return True
    return False


def finish(run: Run, started: float, stopped: str | None, processor: Any) -> dict[str, Any]:
    accelerator, progress = run.accelerator, run.progress
    best = progress.best_checkpoint and run.checkpointer.root / progress.best_checkpoint
    if run.cfg.restore_best and best and not stopped:
        accelerator.load_state(str(best))  # the exported weights below are then the best ones
    history = progress.history[-1] if progress.history else {}
    wall = time.perf_counter() - started
    summary = {
        "run_dir": str(run.run_dir), "monitor": run.monitor, "monitor_mode": run.mode,
        "best_epoch": progress.best_epoch, "best_metric": progress.best_metric,
        "best_checkpoint": str(best) if best else None,
        "final_train": {k[6:]: v for k, v in history.items() if k.startswith("train/")},
        "final_val": {k[4:]: v for k, v in history.items() if k.startswith("val/")},
        "epochs": progress.epoch, "steps": progress.step, "samples": progress.samples,
        "skipped_steps": progress.skipped_steps, "stopped": stopped,
        "wall_time_s": wall, "train_time_s": progress.train_time_s,
        "samples_per_s": progress.samples / progress.train_time_s if progress.train_time_s else None,
        "processes": accelerator.num_processes, "precision": run.plan["precision_in_effect"],
        "compute_dtype": run.compute_dtype.dtype, "device": run.plan["device"],
    }
    if not stopped:
        accelerator.wait_for_everyone()
        accelerator.save_model(run.model, str(run.run_dir), safe_serialization=True)
        _export_pretrained(accelerator, run.model, processor, run.run_dir / "model")
    if accelerator.is_main_process:
        write_summary(run.run_dir, summary)
    accelerator.print(report.summary_line(summary))
    return summary


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


def _log_step(run: Run, bar) -> None:
    values = {"kind": "step", "train/loss": run.meter.interval_loss(),
              "lr": run.optimizer.param_groups[0]["lr"], "epoch": run.progress.epoch + 1}
    if run.grads.norm is not None:
        values["grad_norm"] = float(run.grads.norm)
    if run.progress.skipped_steps:
        values["skipped_steps"] = run.progress.skipped_steps
    run.accelerator.log(values, step=run.progress.step)
    bar.set_postfix(loss=f"{values['train/loss']:.4f}", refresh=False)
