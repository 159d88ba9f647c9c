"""The speed options of `TrainConfig`, applied once before `prepare`; each does nothing when off, and is refused
with one line where it cannot apply.

    optimizer_impl          fused / foreach / for_loop kernels of torch's SGD, Adam, AdamW (auto: fused where
                            torch has fused kernels for the device: one kernel per step, and no host read)
    channels_last           NHWC weights, so 2-D convolutions run in channels-last kernels (GPUs: tensor cores)
    tf32                    TF32 float32 matmuls and convolutions on Ampere or newer NVIDIA GPUs
    gradient_checkpointing  Hugging Face models recompute activations in backward: less memory, more compute
    compile                 torch.compile through Accelerate's dynamo plugin: the whole model, or each repeated
                            block (regional: the same code compiled once, a fraction of the warm-up)
    pin_memory              page-locked host batches, copied to the GPU without blocking
"""

from __future__ import annotations

import importlib.util
import shutil
from typing import Any

import torch

from .config import TrainConfig
from .errors import UserError
from .internals import fused_devices


def optimizer_kwargs(cfg: TrainConfig, device_type: str) -> dict[str, Any]:
    """The implementation keyword for torch's optimizer. `auto` takes the fused kernels wherever torch has them for
    the device (CPU and CUDA among them): one launch per step, and they skip a non-finite step on the device, so
    the step reads nothing back (gradients.NonFiniteGuard). Measured on a 2-core CPU, the digits CNN's training
    time was 0.87-0.96x foreach's."""
    impl = cfg.optimizer_impl
    if impl == "auto":
        return {"fused": True} if device_type in fused_devices() else {}
    return {"fused": {"fused": True}, "foreach": {"foreach": True}, "for_loop": {"foreach": False}}[impl]


def describe_optimizer(cfg: TrainConfig, device_type: str) -> str:
    """The optimizer's kernels as the plan shows them."""
    kwargs = optimizer_kwargs(cfg, device_type)
    kind = "fused" if kwargs.get("fused") else "for-loop" if kwargs.get("foreach") is False else "foreach"
    return f"{kind} {cfg.optimizer}"


def prepare_model(cfg: TrainConfig, model: torch.nn.Module, device_type: str) -> list[str]:
    """Apply the model-side options to `model` (before `prepare`); the names of those in effect, for the plan."""
    applied = []
    if cfg.channels_last:
        if not any(isinstance(m, torch.nn.Conv2d) for m in model.modules()):
            raise UserError("--channels-last applies to models with 2-D convolutions (4-D image inputs); this model "
                            f"({type(model).__name__}) has none. Drop --channels-last.")
        model.to(memory_format=torch.channels_last)
        applied.append("channels_last")
    if cfg.gradient_checkpointing:
        if not getattr(model, "supports_gradient_checkpointing", False):
            raise UserError("--gradient-checkpointing needs a Hugging Face model that supports it; "
                            f"{type(model).__name__} does not. For your own model, wrap blocks in "
                            "torch.utils.checkpoint.checkpoint.")
        kwargs = {"use_reentrant": False}  # the reentrant variant needs inputs that require grad
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x renames the switch
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        applied.append("gradient_checkpointing")
    if cfg.tf32:
        major = torch.cuda.get_device_capability()[0] if device_type == "cuda" else 0
        if major < 8:
            raise UserError(f"--tf32 needs an NVIDIA GPU of the Ampere generation or newer (compute capability 8.0+); "
                            f"this run is on {device_type if device_type != 'cuda' else f'compute capability {major}'}."
                            " Drop --tf32.")
        torch.backends.cuda.matmul.allow_tf32 = True  # asked for by the user: a process-wide torch setting
        torch.backends.cudnn.allow_tf32 = True
        applied.append("tf32")
    return applied


def pin_memory(cfg: TrainConfig, gpu: bool) -> bool:
    """Whether loaders pin their batches (and copies do not block): --pin-memory, default on with a GPU."""
    if cfg.pin_memory and not gpu:
        raise UserError("--pin-memory true needs a GPU to copy the batches to; this run is on the CPU. Drop it.")
    return gpu if cfg.pin_memory is None else cfg.pin_memory


def dynamo_plugin(cfg: TrainConfig, cpu: bool):
    """Accelerate's TorchDynamoPlugin for --compile, or None when off (the launch config's dynamo settings then
    apply, as Accelerate reads them)."""
    if cfg.compile == "off":
        return None
    from accelerate.utils import DynamoBackend, TorchDynamoPlugin

    if cfg.compile_backend == "inductor":
        if cpu and not (shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")):
            raise UserError("--compile with the inductor backend on the CPU needs a C++ compiler (g++ or clang++); "
                            "install one, or pass --compile-backend eager.")
        if not cpu and importlib.util.find_spec("triton") is None:
            raise UserError("--compile with the inductor backend on a GPU needs triton: pip install triton, or pass "
                            "--compile-backend eager.")
    if cfg.compile_backend == "cudagraphs" and cpu:
        raise UserError("--compile-backend cudagraphs needs a CUDA GPU; use inductor or eager on the CPU.")
    return TorchDynamoPlugin(backend=DynamoBackend(cfg.compile_backend.upper()), mode=cfg.compile_mode,
                             use_regional_compilation=cfg.compile == "regional")


def describe_compile(cfg: TrainConfig) -> list[str]:
    if cfg.compile == "off":
        return []
    return [f"compile {cfg.compile} ({cfg.compile_backend}, mode {cfg.compile_mode})"]
