"""From the launch (environment + TrainConfig) to a checked `Accelerator`, and the plan printed once at start.

Accelerate reads the launch config through environment variables set by `accelerate launch`. A few launches do
something other than what they ask for, with no warning; each is corrected or refused here:

* a multi-GPU config on a machine without a GPU starts N processes that each train alone: we run real DDP on the
  CPU over gloo instead, and the plan says so;
* a `MULTI_CPU` config without an MPI hostfile starts one process instead of N: refused, naming the config to use;
* fp16 on a CPU silently trains in fp32, FSDP on a CPU silently runs plain DDP: refused;
* the launcher's `WORLD_SIZE` must equal the processes Accelerate sees, or we refuse.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import NoReturn

import torch

from . import speed
from .config import TrainConfig
from .errors import UserError
from .internals import reset_accelerate_state, run_exit_handlers

CPU_DDP_HINT = "accelerate launch --config_file launch_configs/cpu_ddp.yaml ..."


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes")


def _has_gpu() -> bool:
    """A CUDA, XPU or Apple MPS device this process could train on."""
    backends = (torch.cuda, getattr(torch, "xpu", None), getattr(torch.backends, "mps", None))
    return any(b is not None and b.is_available() for b in backends)


def _cores() -> list[int]:
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))


def idle_cores(cores: list[int], sample_s: float = 0.05, busy_percent: float = 50.0) -> int:
    """How many of `cores` another process is not keeping busy now (psutil, sampled over `sample_s`)."""
    import psutil

    load = psutil.cpu_percent(interval=sample_s, percpu=True)
    return sum(1 for core in cores if core >= len(load) or load[core] < busy_percent)


def _launcher_default() -> bool:
    """Whether OMP_NUM_THREADS is `accelerate launch`'s own default, not the user's: when neither the launcher's
    environment nor its command line gives a count, it sets physical cores / processes, which busy-waits against
    anyone else on the machine (read from the launcher process itself, an ancestor of this one)."""
    if not any(key.startswith("ACCELERATE_") for key in os.environ):
        return False
    import psutil

    try:
        for parent in psutil.Process().parents():
            cmd = parent.cmdline()
            if "launch" in cmd and any(part.endswith(("accelerate", "accelerate.commands.launch")) for part in cmd):
                given = any(part.startswith("--num_cpu_threads_per_process") for part in cmd)
                return not given and "OMP_NUM_THREADS" not in parent.environ()
    except psutil.Error:  # a parent we may not read: keep the count we were given
        return False
    return False


def choose_threads(num_threads: int | None) -> tuple[int, str]:
    """Torch threads for this process, and the rule that chose them (shown in the plan).

    --num-threads wins; then OMP_NUM_THREADS (also what `accelerate launch --num_cpu_threads_per_process` sets,
    but not the count the launcher picks by itself); otherwise this process's share of the cores that are idle now. More OpenMP threads than free cores busy-wait
    against each other and against the neighbour's job: measured 15x slower on a 2-core machine with one core busy.
    """
    if num_threads is not None:
        return num_threads, "--num-threads"
    omp = os.environ.get("OMP_NUM_THREADS", "").strip()
    if omp and not _launcher_default():
        if not omp.isdigit() or int(omp) < 1:
            raise UserError(f"OMP_NUM_THREADS={omp} is not a thread count: set it to 1 or more, or unset it.")
        return int(omp), "OMP_NUM_THREADS"
    cores = _cores()
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))  # set by the launcher for this machine
    idle = idle_cores(cores)
    return max(1, min(len(cores), idle) // local), f"{idle} of {len(cores)} cores idle, {local} process(es) here"


def set_threads(num_threads: int | None) -> tuple[int, str]:
    """Set torch's threads for this process (see `choose_threads`); returns (threads, rule)."""
    threads, rule = choose_threads(num_threads)
    torch.set_num_threads(threads)
    return threads, rule


def check_launch(cfg: TrainConfig) -> tuple[bool, str, list[str]]:
    """Decide (cpu, precision, notes) for this launch, refusing launches that would not do what they ask."""
    notes: list[str] = []
    world = int(os.environ.get("WORLD_SIZE", "1"))
    gpu = _has_gpu()
    cpu = cfg.cpu or _env_flag("ACCELERATE_USE_CPU") or not gpu
    if (world == 1 and os.environ.get("MASTER_ADDR") and "ACCELERATE_USE_CPU" in os.environ
            and not any(k in os.environ for k in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"))
            and os.environ.get("ACCELERATE_USE_DEEPSPEED", "false") != "true"):
        raise UserError(
            "the launch config asks for several processes, but `accelerate launch` started only this one "
            "(a MULTI_CPU config needs an MPI hostfile). For several processes on one CPU machine use "
            f"`{CPU_DDP_HINT}`.")
    precision = cfg.mixed_precision or os.environ.get("ACCELERATE_MIXED_PRECISION", "no") or "no"
    if precision not in ("no", "fp16", "bf16"):
        raise UserError(f"mixed precision `{precision}` is not supported here; use no, fp16 or bf16.")
    if precision == "fp16" and cpu:
        raise UserError(
            "fp16 mixed precision needs a GPU: on the CPU it would silently train in fp32. "
            "Use `--mixed-precision bf16` (real bf16 autocast on the CPU) or `--mixed-precision no`.")
    if cpu and _env_flag("ACCELERATE_USE_FSDP"):
        raise UserError(
            "FSDP needs GPUs: on the CPU Accelerate would silently run plain DDP instead. "
            f"For several CPU processes use `{CPU_DDP_HINT}`; on a GPU machine use launch_configs/fsdp.yaml.")
    if cpu and _env_flag("ACCELERATE_USE_DEEPSPEED"):
        raise UserError(f"DeepSpeed needs GPUs. For several CPU processes use `{CPU_DDP_HINT}`.")
    return cpu, precision, notes


def make_accelerator(cfg: TrainConfig, project_dir: str | None = None, trackers: list | None = None):
    """Build the Accelerator this launch asks for, after `check_launch`; returns (accelerator, notes)."""
    from accelerate import Accelerator
    from accelerate.utils import (
        DataLoaderConfiguration,
        DistributedDataParallelKwargs,
        ProjectConfiguration,
    )

    cpu, precision, notes = check_launch(cfg)
    reset_accelerate_state()  # a second fit() in one process starts clean
    accelerator = Accelerator(
        cpu=cpu,
        mixed_precision=precision,
        gradient_accumulation_steps=cfg.grad_accum,
        # Same shuffled order on every process and for any process count: seed + epoch decide it.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=cfg.seed,
                                                  non_blocking=speed.pin_memory(cfg, not cpu)),
        dynamo_plugin=speed.dynamo_plugin(cfg, cpu),
        # Our schedules count optimizer steps; Accelerate would otherwise step them once per process.
        step_scheduler_with_optimizer=False,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=cfg.find_unused_parameters)],
        log_with=trackers or None,
        project_config=ProjectConfiguration(project_dir=project_dir, logging_dir=project_dir),
    )
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if accelerator.num_processes != world:
        raise UserError(
            f"the launcher started {world} processes but Accelerate sees {accelerator.num_processes} "
            f"({accelerator.distributed_type.value}); they would train as separate runs. "
            f"For CPU DDP use `{CPU_DDP_HINT}`.")
    return accelerator, notes


def shutdown(accelerator) -> None:
    """End trackers and leave the process group together, so no rank aborts at exit."""
    accelerator.end_training()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        accelerator.wait_for_everyone()
        torch.distributed.destroy_process_group()


def leave(code: int = 0) -> NoReturn:
    """End the command line (or a script, after `fit`) with `code`, without Python's interpreter teardown.

    First it does what Python's own exit does before that teardown: it waits for the other threads that are not
    daemons, runs the atexit handlers (trackers, loader workers, temporary folders) and flushes the output. Then
    the process ends. Under a launcher, a failing rank exits the normal way instead: a fast exit would let the
    launcher stop rank 0 before rank 0 reports.

    Measured here (2-core CPU, Python 3.11, torch 2.14):

    * the teardown frees every module and object one at a time. It took 1.75-1.85 s after an `accel-train train`
      digits run, and 0.9 s after `import torch` alone. A plain script pays this too;
    * under a launcher with gloo and 2 processes, about 1 launch in 8 of a short script aborted in the teardown,
      after its work was written ("terminate called without an active exception": a core dump shows gloo's worker
      thread freeing a finished collective's tensor while Python finalizes). `shutdown` has left the process group
      by then.
    """
    code = int(code or 0)
    if code != 0 and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        _flush()
        sys.exit(code)
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    run_exit_handlers()
    _flush()
    os._exit(code)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing more can reach it
            pass
