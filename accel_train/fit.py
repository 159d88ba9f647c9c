"""`fit()`: the Python API. Builds the Accelerator, loaders, optimizer and schedule, runs the loop of `loop.py`
epoch by epoch, and writes the run folder. Logging, checkpoints and the plan live here, not in the loop."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import broadcast_object_list, set_seed

from . import report
from .checkpoint import Checkpointer, Progress, read_progress, resolve_resume
from .config import TrainConfig
from .data import batches_per_process, dataset_labels, make_loader
from .errors import UserError, install_excepthook
from .launch import make_accelerator, set_threads, shutdown
from .loop import GradientWindow, Meter, evaluate, train_one_epoch
from .optim import build_optimizer, build_plateau, build_scheduler, steps_per_epoch, total_steps
from .run import JsonlTracker, check_run_dir, default_run_dir, write_config, write_summary
from .speed import trim_optimizer_overhead
from .task import Task

LOWER_IS_BETTER = ("loss", "mse", "mae", "perplexity", "error")


def fit(
    model: torch.nn.Module,
    train_data: Any,
    eval_data: Any = None,
    *,
    config: TrainConfig | None = None,
    loss: str | Callable | None = "cross_entropy",
    metrics: Sequence | str | None = ("accuracy",),
    task: Task | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    collate_fn: Callable | None = None,
    processor: Any = None,
    options: Any = None,
) -> dict[str, Any]:
    """Train `model` on `train_data`, validating on `eval_data` after every epoch.

    Runs unchanged under `python train.py` and `accelerate launch train.py` on any launch config.

    Args:
        model: any `torch.nn.Module`. It is called as `model(x)`, `model(*inputs)` or `model(**batch)` by batch shape.
        train_data, eval_data: a map-style or iterable `torch.utils.data.Dataset`, a `datasets.Dataset`, or a
            DataLoader. Batches are `(x, y)`, `((x1, x2, ...), y)` or dicts of model arguments.
        config: run settings (`TrainConfig`); defaults when None.
        loss: `cross_entropy`, `bce_with_logits`, `mse`, `l1`, `smooth_l1`, a callable `fn(output, targets)`,
            or None to use the model's own `output.loss` (Hugging Face models with `labels` in the batch).
        metrics: metric names (`accuracy`, `f1`, `precision`, `recall`, `mse`, `mae`) or callables.
        task: a `Task` replacing `loss` and `metrics` (custom batch handling).
        optimizer, scheduler: your own, instead of the ones `config` describes; the scheduler is stepped once
            per optimizer step.
        collate_fn: merges samples into a batch (for example transformers' `DataCollatorWithPadding`).
        processor: a tokenizer or processor saved with the final model (`<run>/model/`, `save_pretrained`).
        options: extra settings to record in the run folder's `config.yaml` (a dataclass or dict).

    Returns:
        The run summary (also in `<run>/summary.json`): best epoch and metric, final metrics, wall time, samples/s.

    Raises:
        UserError: a problem in the configuration, data, model or launch, with the fix in the message.
    """
    install_excepthook()
    cfg = config or TrainConfig()
    started = time.perf_counter()
    set_threads(cfg.num_threads)
    jsonl = JsonlTracker(".")
    accelerator, notes = make_accelerator(cfg, trackers=[jsonl, *cfg.log_with])
    try:
        run_dir, resume_from = _agree(accelerator, lambda: _prepare_run_dir(cfg))
        jsonl.path = run_dir / "metrics.jsonl"
        accelerator.project_configuration.set_directories(str(run_dir))
        set_seed(cfg.seed)
        task = task or Task(loss=loss, metrics=metrics)
        monitor, mode = _resolve_monitor(cfg, task)

        train_loader = make_loader(train_data, batch_size=cfg.batch_size, shuffle=True, collate_fn=collate_fn,
                                   num_workers=cfg.num_workers, split="train")
        eval_loader = None if eval_data is None else make_loader(
            eval_data, batch_size=cfg.eval_batch_size or cfg.batch_size, shuffle=False, collate_fn=collate_fn,
            num_workers=cfg.num_workers, split="validation")
        optimizer = optimizer or build_optimizer(cfg, model)
        model, optimizer, train_loader, eval_loader = accelerator.prepare(model, optimizer, train_loader, eval_loader)
        trim_optimizer_overhead(optimizer)
        batches = batches_per_process(train_loader)
        if batches == 0:
            raise UserError("the training data gives no batch on this process: use fewer processes or more data.")
        if batches is None and cfg.max_steps is None:
            raise UserError("the training data has no length (a streaming dataset): set --max-steps.")
        steps = total_steps(cfg, batches)
        raw_optimizer = optimizer.optimizer
        scheduler = scheduler or build_scheduler(cfg, raw_optimizer, steps)
        plateau = build_plateau(cfg, raw_optimizer, mode)
        scheduler, plateau = accelerator.prepare(scheduler, plateau)
        grads = GradientWindow(accelerator, model, cfg.max_grad_norm, cfg.clip_value, cfg.find_unused_parameters)
        meter = Meter(accelerator, task.make_metrics("train"))
        task.dataset_labels = dataset_labels(train_data)  # checked against the model's outputs at step 1

        progress = Progress()
        if resume_from is not None:
            progress = _load_checkpoint(accelerator, resume_from)
        plan = report.describe(accelerator, cfg, train_loader, eval_loader, steps, notes, model)
        if accelerator.is_main_process:
            write_config(run_dir, {**cfg.to_dict(), **_as_dict(options)})
            report.write(run_dir, plan)
        accelerator.print(report.render(plan, run_dir, resume_from))
        accelerator.init_trackers(cfg.name, config=report.hparams(cfg))

        checkpointer = Checkpointer(run_dir, keep=1)
        bar = report.progress_bar(accelerator, cfg, steps, progress.step)
        train_time = 0.0
        epochs = cfg.epochs if cfg.max_steps is None else math.inf
        per_epoch = steps_per_epoch(batches, cfg.grad_accum) if batches else None
        val: dict[str, float] = {}
        train: dict[str, float] = {}
        while progress.epoch < epochs and progress.step < steps:
            epoch = progress.epoch
            train_loader.set_epoch(epoch)  # the data order depends on (seed, epoch) only: resumes see the same
            meter.reset()
            tick = time.perf_counter()
            for _ in train_one_epoch(accelerator, model, task, train_loader, optimizer, scheduler, grads, meter):
                progress.step += 1
                bar.update(1)
                if progress.step % cfg.log_every == 0:
                    _log_step(accelerator, bar, meter, grads, raw_optimizer, progress.step, epoch)
                if progress.step >= steps:
                    break
            train_time += time.perf_counter() - tick
            train = meter.compute()
            progress.samples += meter.samples
            val = evaluate(accelerator, model, task, eval_loader)
            progress.epoch = epoch + 1
            watched = val or train
            if monitor not in watched:
                raise UserError(f"--monitor {monitor} is not among the {'validation' if val else 'training'} "
                                f"metrics ({', '.join(watched)}). Set --monitor to one of them.")
            if plateau is not None:
                plateau.step(watched[monitor])
            name = f"step_{progress.step:07d}"
            if progress.improved(watched[monitor], mode):
                progress.best_metric, progress.best_epoch, progress.best_checkpoint = watched[monitor], epoch + 1, name
            record = {"kind": "epoch", "epoch": epoch + 1, **{f"train/{k}": v for k, v in train.items()},
                      **{f"val/{k}": v for k, v in val.items()}, "lr": raw_optimizer.param_groups[0]["lr"]}
            progress.history.append(record)
            accelerator.log(record, step=progress.step)
            bar.write(report.epoch_line(record, per_epoch and math.ceil(steps / per_epoch)))
            checkpointer.save(accelerator, progress, name)
        bar.close()

        wall = time.perf_counter() - started
        summary = {
            "run_dir": str(run_dir), "monitor": monitor, "monitor_mode": mode,
            "best_epoch": progress.best_epoch, "best_metric": progress.best_metric,
            "best_checkpoint": progress.best_checkpoint and str(checkpointer.root / progress.best_checkpoint),
            "final_train": train, "final_val": val, "epochs": progress.epoch, "steps": progress.step,
            "samples": progress.samples, "wall_time_s": wall, "train_time_s": train_time,
            "samples_per_s": progress.samples / train_time if train_time else None,
            "processes": accelerator.num_processes, "precision": plan["precision_in_effect"], "device": plan["device"],
        }
        accelerator.wait_for_everyone()
        accelerator.save_model(model, str(run_dir), safe_serialization=True)
        _export_pretrained(accelerator, model, processor, run_dir / "model")
        if accelerator.is_main_process:
            write_summary(run_dir, summary)
        accelerator.print(report.summary_line(summary))
        return summary
    finally:
        shutdown(accelerator)


def _agree(accelerator, decide: Callable[[], Any]) -> Any:
    """Run `decide` on the main process and hand its result (or its UserError) to every process."""
    result: list[Any] = [None]
    if accelerator.is_main_process:
        try:
            result[0] = ("ok", decide())
        except UserError as error:
            result[0] = ("error", str(error))
    if accelerator.num_processes > 1:
        broadcast_object_list(result, from_process=0)
    kind, value = result[0]
    if kind == "error":
        raise UserError(value)
    return value


def _prepare_run_dir(cfg: TrainConfig) -> tuple[Path, Path | None]:
    """Choose the run folder and the checkpoint to resume from; create the folder."""
    run_dir = Path(cfg.output_dir) if cfg.output_dir else None
    resume_from = resolve_resume(cfg.resume, run_dir)
    if run_dir is None:
        run_dir = resume_from.parent.parent if resume_from is not None else default_run_dir(cfg.name)
    check_run_dir(run_dir, resuming=cfg.resume is not None)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir, resume_from


def _load_checkpoint(accelerator, path: Path) -> Progress:
    progress = read_progress(path)
    try:
        accelerator.load_state(str(path))
    except (RuntimeError, KeyError, ValueError, OSError) as error:
        raise UserError(f"cannot resume from {path}: it does not match this model or run "
                        f"({type(error).__name__}: {str(error).splitlines()[0][:300]}).") from None
    return progress


def _resolve_monitor(cfg: TrainConfig, task: Task) -> tuple[str, str]:
    specs = task.metric_specs
    names = [specs] if isinstance(specs, str) else [s for s in (specs or []) if isinstance(s, str)]
    monitor = cfg.monitor or (names[0] if names else "loss")
    mode = cfg.monitor_mode or ("min" if monitor.endswith(LOWER_IS_BETTER) else "max")
    return monitor, mode


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


def _log_step(accelerator, bar, meter: Meter, grads: GradientWindow, optimizer, step: int, epoch: int) -> None:
    values = {"kind": "step", "train/loss": meter.interval_loss(), "lr": optimizer.param_groups[0]["lr"], "epoch": epoch + 1}
    if grads.norm is not None:
        values["grad_norm"] = float(grads.norm)
    accelerator.log(values, step=step)
    bar.set_postfix(loss=f"{values['train/loss']:.4f}", refresh=False)


def _as_dict(options: Any) -> dict[str, Any]:
    import dataclasses

    if options is None:
        return {}
    if dataclasses.is_dataclass(options):
        return {"options": dataclasses.asdict(options)}
    return {"options": dict(options)}
