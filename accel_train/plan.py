"""The training plan: everything people get wrong about a launch (processes, precision in effect, effective batch,
optimizer steps, warm-up), computed once at start, printed by the main process and written to `plan.json`."""

from __future__ import annotations

import importlib.metadata
import os
import platform
from pathlib import Path
from typing import Any

import torch

from .checkpoint import write_json
from .config import TrainConfig
from .optim import describe_schedule, steps_per_epoch

PACKAGES = ("accel_train", "torch", "accelerate", "transformers", "datasets", "torchvision")
COMPUTE_LAYERS = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.ConvTranspose1d,
                  torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d)
BATCH_DEPENDENT_LAYERS = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d, torch.nn.SyncBatchNorm,
                          torch.nn.Dropout, torch.nn.Dropout1d, torch.nn.Dropout2d, torch.nn.Dropout3d,
                          torch.nn.AlphaDropout, torch.nn.FeatureAlphaDropout)


def _versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return found


def precision_in_effect(accelerator) -> str:
    """The precision the forward pass really runs in: autocast dtype on the device, or fp32."""
    mode = accelerator.mixed_precision
    if mode == "fp16":
        return "fp16 autocast + GradScaler" if accelerator.scaler is not None else "fp16 autocast"
    if mode == "bf16":
        return "bf16 autocast"
    return "fp32"


class ComputeDtype:
    """Records the dtype of the first Linear/Conv output of the first training step: what autocast really did
    (Accelerate hands the model's final outputs back in fp32, so those cannot tell)."""

    def __init__(self, model):
        self.dtype: str | None = None
        layer = next((m for m in model.modules() if isinstance(m, COMPUTE_LAYERS)), None)
        self._handle = layer.register_forward_hook(self._hook) if layer is not None else None

    def _hook(self, module, inputs, output) -> None:
        if isinstance(output, torch.Tensor):
            self.dtype = str(output.dtype).removeprefix("torch.")
        self._handle.remove()


def batch_dependent_layers(model) -> list[str]:
    """Layer types whose training output depends on the batch split or on per-process randomness, so that N
    processes cannot match one process exactly: batch norm (per-process statistics) and dropout (masks)."""
    return sorted({type(m).__name__ for m in model.modules() if isinstance(m, BATCH_DEPENDENT_LAYERS)})


def describe(accelerator, cfg: TrainConfig, train_loader, eval_loader, steps: int, notes: list[str], model,
             threads_rule: str | None = None, speed: list[str] = (), recipes: list[str] = ()) -> dict[str, Any]:
    """The training plan: everything people get wrong about a launch, computed once."""
    try:
        batches = len(train_loader)
    except TypeError:
        batches = None
    train_samples = _length(train_loader.dataset)
    warmup = cfg.warmup_steps if cfg.scheduler in ("linear_warmup", "cosine_warmup", "wsd") else 0
    return {
        "device": accelerator.device.type,
        "distributed_type": accelerator.distributed_type.value,
        "backend": _backend(),
        "processes": accelerator.num_processes,
        "machines": int(os.environ.get("ACCELERATE_NUM_MACHINES", os.environ.get("GROUP_WORLD_SIZE", "1")) or 1),
        "threads_per_process": torch.get_num_threads() if accelerator.device.type == "cpu" else None,
        "threads_rule": threads_rule if accelerator.device.type == "cpu" else None,
        "precision": accelerator.mixed_precision,
        "precision_in_effect": precision_in_effect(accelerator),
        "parameters": sum(p.numel() for p in model.parameters()),
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "batch_dependent_layers": batch_dependent_layers(model),
        "batch_size_per_device": cfg.batch_size,
        "grad_accum": cfg.grad_accum,
        "effective_batch": cfg.batch_size * accelerator.num_processes * cfg.grad_accum,
        "train_samples": train_samples,
        "eval_samples": _length(eval_loader.dataset) if eval_loader is not None else 0,
        "batches_per_process_per_epoch": batches,
        "steps_per_epoch": steps_per_epoch(batches, cfg.grad_accum) if batches else None,
        "total_steps": steps,
        "warmup_steps": warmup,
        "optimizer": cfg.optimizer,
        "speed": list(speed),  # the speed options in effect, and the optimizer's kernels
        "scheduler": cfg.scheduler,
        "schedule": describe_schedule(cfg, steps),  # where a schedule's phases or restarts fall, or None
        "recipes": list(recipes),  # the training recipes in effect (accel_train.recipes)
        "notes": notes,
        "versions": _versions(),
    }


def _backend() -> str | None:
    """The process group's backend (gloo, nccl, ...), None in one process."""
    import torch.distributed as dist

    return dist.get_backend() if dist.is_available() and dist.is_initialized() else None


def _length(dataset) -> int | None:
    """A dataset's length, or None for a stream."""
    try:
        return len(dataset)
    except TypeError:
        return None


def _count(value: int | None) -> str:
    return "streamed" if value is None else str(value)


def write(run_dir: Path, plan: dict[str, Any]) -> None:
    write_json(run_dir / "plan.json", plan)


MODES = {"NO": "", "MULTI_CPU": "DDP", "MULTI_GPU": "DDP", "MULTI_NPU": "DDP", "MULTI_XPU": "DDP", "FSDP": "FSDP",
         "DEEPSPEED": "DeepSpeed", "XLA": "XLA"}


def _processes(plan: dict[str, Any]) -> str:
    """`1 process on the cpu, 2 threads [rule]` / `2 processes on the cpu, DDP over gloo, 1 thread each [...]`."""
    n, threads, rule = plan["processes"], plan["threads_per_process"], plan.get("threads_rule")
    text = f"{n} process{'es' if n > 1 else ''} on the {plan['device']}"
    mode = MODES.get(plan["distributed_type"], plan["distributed_type"])
    if mode:
        text += f", {mode}" + (f" over {plan['backend']}" if plan.get("backend") else "")
    if plan.get("machines", 1) > 1:
        text += f", {plan['machines']} machines"
    if threads:
        text += f", {threads} thread{'s' if threads > 1 else ''}{' each' if n > 1 else ''}" + (
            f" [{rule}]" if rule else "")
    return text


def render(plan: dict[str, Any], run_dir: Path, resume_from: Path | None) -> str:
    warmup, total = plan["warmup_steps"], plan["total_steps"]
    lines = [
        f"accel_train plan  ->  {run_dir}",
        f"  processes   {_processes(plan)}",
        f"  precision   {plan['precision_in_effect']}",
        f"  batch       {plan['batch_size_per_device']} per device x {plan['processes']} processes x "
        f"{plan['grad_accum']} accumulation = {plan['effective_batch']} per optimizer step",
        f"  steps       {plan['steps_per_epoch'] or '?'} per epoch, {total} in total"
        f"{', ' + str(warmup) + ' warm-up' if warmup else ''}"
        f"  ({plan['optimizer']}, {plan['scheduler']} schedule)",
        f"  data        {_count(plan['train_samples'])} train / {_count(plan['eval_samples'])} validation samples; "
        f"model {plan['trainable_parameters']:,} trainable parameters",
    ]
    if plan.get("speed"):
        lines.append(f"  speed       {', '.join(plan['speed'])}")
    if plan.get("schedule"):
        lines.append(f"  schedule    {plan['schedule']}")
    lines += [f"  recipe      {line}" for line in plan.get("recipes", [])]
    if resume_from is not None:
        lines.append(f"  resume      from {resume_from}")
    if warmup >= total:
        lines.append(f"  warning     the warm-up ({warmup} steps) is not shorter than the run ({total} steps): the LR "
                     "never reaches --lr. Lower --warmup-steps or train longer.")
    lines += [f"  note        {note}" for note in plan["notes"]]
    return "\n".join(lines)

