"""`fit()`: the Python API. Builds the Accelerator, loaders, optimizer and schedule, runs the loop of `loop.py`
epoch by epoch (`epochs.py`), and writes the run folder."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import broadcast_object_list, set_seed

from . import plan as plans
from . import speed, tracking
from .batch_size import fit_batch_size
from .checkpoint import (Progress, StopRequest, read_progress, resolve_resume,
    truncate_metrics)
from .config import TrainConfig
from .data import TrainBatches, batches_per_process, dataset_labels, make_loader
from .epochs import Monitor, Run, finish, train_epochs
from .errors import UserError
from .faults import FaultCheckpointer, write_faults
from .gradients import GradientWindow, NonFiniteGuard, keeps_verdicts_on_device
from .internals import skip_on_device, trim_optimizer_overhead, trim_step_overhead
from .job import Job
from .launch import make_accelerator, set_threads, shutdown
from .quiet import quiet_libraries
from .logs import StepLog
from .metrics import Meter
from .monitor import Performance
from .plot_worker import PlotWorker
from .preflight import check_monitor
from .peers import Peers
from .optim import build_optimizer, build_plateau, build_scheduler, steps_per_epoch, total_steps
from .recipes import EMA, for_run
from .run_folder import JsonlTracker, check_run_dir, default_run_dir, write_config
from .reshard import check_layout, load_meters
from .run_lock import RunLock
from .task import Task


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
    options: Any = None, ema: EMA | None = None, mix: Callable | None = None,
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
        task: a `Task` replacing `loss` and `metrics` (custom batch handling). fit trains with a copy
            (`task.for_run`): the task you pass is left as it is.
        optimizer, scheduler, ema, mix: your own, instead of `config`'s: a scheduler stepped once per optimizer
            step, an `EMA` of the weights (`ema.module` after the run), a batch mixer such as torchvision's `v2.MixUp`.
        collate_fn: merges samples into a batch (for example transformers' `DataCollatorWithPadding`).
        processor: a tokenizer or processor saved with the final model (`<run>/model/`, `save_pretrained`).
        options: extra settings to record in the run folder's `config.yaml`: a `Job` (recorded as the job file's
            `job:` section), a dataclass or a dict.

    Returns:
        The run summary (also in `<run>/summary.json`): best epoch and metric, final metrics, wall time, samples/s.
        `summary["stopped"]` names the signal (or `--stop-at-step`) when the run checkpointed and stopped early.

    Raises:
        UserError: a problem in the configuration, data, model or launch, with the fix in the message. Scripts
            print it as one line with `accel_train.errors.exit_on_user_error`.
    """
    cfg, started = config or TrainConfig(), time.perf_counter()
    quiet_libraries(cfg.verbose)
    threads_rule = set_threads(cfg.num_threads)[1]
    trackers = [JsonlTracker("."), *tracking.make_trackers(cfg.log_with)]  # each checked before anything is written
    accelerator, notes = make_accelerator(cfg, trackers=trackers)
    with Peers(accelerator, cfg.peer_timeout, cfg.output_dir), RunLock() as lock:  # a lost peer; one run a folder
        try:
            with StopRequest(cfg.stop_at_step) as stop:
                task = (task or Task(loss, metrics)).for_run(dataset_labels(train_data))
                run = _setup(accelerator=accelerator, cfg=cfg, trackers=trackers, stop=stop, notes=notes,
                             options=options, threads_rule=threads_rule, model=model, train_data=train_data,
                             eval_data=eval_data, task=task, optimizer=optimizer, scheduler=scheduler,
                             collate_fn=collate_fn, ema=ema, mix=mix, lock=lock)
                return _train(run, started, processor)
        finally:
            shutdown(accelerator)


def _train(run: Run, started: float, processor) -> dict[str, Any]:
    # a full disk: one line, the work kept; the figures' helper process imports matplotlib while the run trains
    with write_faults(run.run_dir, "writing the run folder"), PlotWorker(run.accelerator.is_main_process) as plotter:
        return finish(run, started, train_epochs(run), processor, plotter)


def _setup(*, accelerator, cfg: TrainConfig, trackers: list, stop: StopRequest, notes: list[str], options,
           threads_rule: str, model, train_data, eval_data, task: Task, optimizer, scheduler, collate_fn, ema,
           mix, lock: RunLock) -> Run:
    """Everything before the first step: run folder, loaders, prepare, schedule, resume, the plan."""
    recipes = for_run(cfg, task, model, optimizer, ema=ema, mix=mix)  # checked before the run folder is made
    task = recipes.task
    cfg, speedups = _speed_up(accelerator, cfg, model, task, train_data, collate_fn, optimizer, notes)
    device = accelerator.device.type
    monitor = Monitor.for_task(cfg, task)
    check_monitor(monitor.name, task, validated=eval_data is not None)  # before anything is written
    run_dir, resume_from = _agree(accelerator, lambda: _prepare_run_dir(cfg, lock))
    accelerator.project_configuration.set_directories(str(run_dir))
    set_seed(cfg.seed)
    loader_args = dict(collate_fn=collate_fn, num_workers=cfg.num_workers, seed=cfg.seed,
                       pin_memory=accelerator.dataloader_config.non_blocking)  # decided once, in make_accelerator
    train_loader = make_loader(train_data, batch_size=cfg.batch_size, shuffle=True, split="train", **loader_args)
    eval_loader = None if eval_data is None else make_loader(
        eval_data, batch_size=cfg.eval_batch_size or cfg.batch_size, shuffle=False, split="validation", **loader_args)
    optimizer = optimizer or build_optimizer(cfg, model, **speed.optimizer_kwargs(cfg, device))
    model, optimizer, train_loader, eval_loader = accelerator.prepare(model, optimizer, train_loader, eval_loader)
    trim_optimizer_overhead(optimizer)
    trim_step_overhead(accelerator, model)
    guard = NonFiniteGuard(cfg.nonfinite, stop)
    if keeps_verdicts_on_device(accelerator.device) and (arm := skip_on_device(optimizer)) is not None:
        guard.defer_to(arm)  # no host read per step: the fused optimizer skips a non-finite update on the device
    batches = batches_per_process(train_loader)
    if batches == 0:
        raise UserError("the training data gives no batch on this process: use fewer processes or more data.")
    if batches is None and cfg.max_steps is None:
        raise UserError("the training data has no length (a streaming dataset): set --max-steps.")
    steps = total_steps(cfg, batches)
    raw_optimizer = optimizer.optimizer
    scheduler, monitor.plateau = accelerator.prepare(scheduler or build_scheduler(cfg, raw_optimizer, steps),
                                                     build_plateau(cfg, raw_optimizer, monitor.mode))
    meter = Meter(accelerator, task.make_metrics("train"))
    recipes.ema.attach(accelerator, model, optimizer)  # before resuming: the checkpoint holds the average
    logged = tracking.logged_steps(run_dir) if resume_from and accelerator.is_main_process else {}  # before truncation
    progress = Progress() if resume_from is None else _resume(accelerator, resume_from, meter, run_dir, cfg)
    progress.batch_size, progress.grad_accum = cfg.batch_size, cfg.grad_accum  # the layout checkpoints record
    plan = plans.describe(accelerator, cfg, train_loader, eval_loader, steps, notes, model, threads_rule, speedups,
                          recipes.lines)
    with write_faults(run_dir, "writing the run folder"):  # config.yaml, plan.json, the trackers' files
        _start_tracking(accelerator, trackers, run_dir, (progress.step, logged),
                        {**cfg.to_dict(), **_as_dict(options)}, plan)
    accelerator.print(plans.render(plan, run_dir, resume_from))
    train_batches = TrainBatches(train_loader, accelerator, cfg.seed)
    return Run(
        accelerator=accelerator, cfg=cfg, run_dir=run_dir, model=model, task=task, optimizer=optimizer,
        scheduler=scheduler, meter=meter, eval_loader=eval_loader, steps=steps, monitor=monitor, progress=progress,
        grads=GradientWindow(accelerator, model, cfg.max_grad_norm, cfg.clip_value,
                             guard=guard, allow_unused=cfg.find_unused_parameters),
        batches=train_batches, perf=Performance.for_run(train_batches, accelerator, cfg),
        steps_per_epoch=steps_per_epoch(batches, cfg.grad_accum) if batches else None,
        checkpointer=FaultCheckpointer(run_dir, keep=max(1, cfg.keep_checkpoints), every=cfg.checkpoint_every,
                                       background=cfg.background_checkpoints), stop=stop,
        log=StepLog(accelerator, cfg.log_every, cfg.progress, steps, progress.step),
        compute_dtype=plans.ComputeDtype(model), precision=plans.precision_in_effect(accelerator),
        device=accelerator.device.type, ema=recipes.ema)


def _start_tracking(accelerator, trackers: list, run_dir: Path, resumed: tuple[int, dict], config: dict,
                    plan: dict) -> None:
    """Write config.yaml and plan.json, and start the trackers in the run folder with the whole resolved config
    (the job's options included) as hyper-parameters; `resumed`: the restored step, what was logged before it."""
    if accelerator.is_main_process:
        write_config(run_dir, config)
        plans.write(run_dir, plan)
    trackers[0].path = run_dir / "metrics.jsonl"
    for tracker in trackers[1:]:
        tracker.place(run_dir, *resumed)
    accelerator.init_trackers(tracking.PROJECT, config=tracking.hparams(config))


def _speed_up(accelerator, cfg: TrainConfig, model, task: Task, train_data, collate_fn, optimizer,
              notes: list[str]) -> tuple[TrainConfig, list[str]]:
    """The speed options on the model, and --auto-batch-size: checked and applied before the run folder is made.
    Returns the config to train with and what the plan shows."""
    device = accelerator.device.type
    speedups = [*speed.prepare_model(cfg, model, device), *speed.describe_compile(cfg),
                *([] if optimizer else [speed.describe_optimizer(cfg, device)])]
    if cfg.auto_batch_size:
        asked = cfg.batch_size
        cfg = fit_batch_size(accelerator, cfg, model, task, train_data, collate_fn)
        if cfg.batch_size != asked:
            notes.append(f"--auto-batch-size: {asked} per device did not fit in memory; {cfg.batch_size} x "
                         f"{cfg.grad_accum} accumulation keeps the effective batch")
    return cfg, speedups


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


def _prepare_run_dir(cfg: TrainConfig, lock: RunLock) -> tuple[Path, Path | None]:
    """Choose the run folder and the checkpoint to resume from; create and lock the folder. Never a silent fresh
    start over another run's files, never two runs in one folder."""
    run_dir = Path(cfg.output_dir) if cfg.output_dir else None
    resume_from = resolve_resume(cfg.resume, run_dir)
    if run_dir is None:
        run_dir = resume_from.parent.parent if resume_from is not None else default_run_dir(cfg.name)
    lock.acquire(run_dir)
    try:
        resume_from = resolve_resume(cfg.resume, run_dir if cfg.output_dir else None)  # again, now nobody writes
        same_run = resume_from is not None and run_dir.resolve() == resume_from.parent.parent.resolve()
        check_run_dir(run_dir, resuming=same_run, auto=cfg.resume == "auto")
    except BaseException:
        lock.fresh = lock.created  # a folder made just now is removed again
        lock.release(ok=False)
        raise
    lock.fresh = not same_run
    return run_dir, resume_from


def _resume(accelerator, path: Path, meter: Meter, run_dir: Path, cfg: TrainConfig) -> Progress:
    progress = read_progress(path)
    try:
        accelerator.load_state(str(path))
    except Exception as error:  # a size mismatch, a truncated file, a missing entry: all mean "cannot resume"
        raise UserError(f"cannot resume from {path}: it does not match this model or run, or it is damaged "
                        f"({type(error).__name__}: {str(error).splitlines()[0][:300]}).") from None
    check_layout(progress, path, cfg.batch_size, cfg.grad_accum, accelerator.num_processes)  # may convert it
    load_meters(path, meter, accelerator.process_index, accelerator.num_processes)
    if accelerator.is_main_process:
        truncate_metrics(run_dir, progress.step)
    accelerator.wait_for_everyone()
    return progress


def _as_dict(options: Any) -> dict[str, Any]:
    """`options` for config.yaml: a job as its job-file section (the file then reruns with `accel-train train`)."""
    if options is None:
        return {}
    if isinstance(options, Job):
        return {"options": {"job": options.record()}}
    if dataclasses.is_dataclass(options):
        return {"options": dataclasses.asdict(options)}
    return {"options": dict(options)}
