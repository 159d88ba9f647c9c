"""Every use of a private Accelerate or torch API, and every reliance on how they work inside, in one place.

Written against accelerate 1.15.0, torch 2.14.1 and CPython 3.11. `missing()` lists what an installed version no
longer has; tests/test_internals.py fails naming this module and the item when an upgrade removes one.

    reset_accelerate_state   AcceleratorState._reset_state, GradientState._reset_state
    mark_prepared            DataLoader._is_accelerate_prepared (read by Accelerator.prepare)
    original_forward         model._original_forward (set by Accelerator.prepare_model under mixed precision)
    gradient_divisor         Accelerator.backward divides the loss by gradient_accumulation_steps
    scale_tensors_           torch._foreach_mul_
    skip_on_device           optimizer.found_inf, read by torch's fused SGD/Adam/AdamW kernels (GradScaler's path)
    trim_optimizer_overhead  AcceleratedOptimizer's step/zero_grad and its gradient_state, accelerator_state, scaler
    trim_step_overhead       what Accelerator.backward, clip_grad_norm_ and accumulate (`_do_sync`) do in the
                             plain case
    fused_devices            torch.utils._foreach_utils._get_fused_kernels_supported_devices
    captured_saves           save_state writes weights, optimizers, schedulers and registered objects through
                             accelerate.checkpointing.save (and only those)
    run_exit_handlers        atexit._run_exitfuncs (CPython): what interpreter teardown runs first

Set ACCEL_TRAIN_PATCH_ACCELERATE=0 to train with Accelerate's own optimizer wrapper, backward and clipping (bitwise
the same, slower).
"""

from __future__ import annotations

import atexit
import functools
import inspect
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from accelerate.optimizer import AcceleratedOptimizer
from accelerate.utils import DistributedType

PATCH_ACCELERATE = os.environ.get("ACCEL_TRAIN_PATCH_ACCELERATE", "1") != "0"


def reset_accelerate_state() -> None:
    """A second `fit()` in one process starts from a clean Accelerate state (the process group is kept)."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()


def mark_prepared(loader) -> None:
    """Make `accelerator.prepare` leave a loader as it is (one we prepared for this process alone)."""
    loader._is_accelerate_prepared = True


def original_forward(module: torch.nn.Module):
    """The model's own forward, before the autocast wrapper Accelerate puts around it under mixed precision."""
    return getattr(module, "_original_forward", None) or module.forward


def gradient_divisor(accelerator) -> int:
    """What the gradients of one optimizer step were divided by before we see them: DDP averages over the
    processes, and `accelerator.backward` divides each micro-batch's loss by the accumulation steps."""
    return accelerator.num_processes * accelerator.gradient_accumulation_steps


_FULL = (torch.float32, torch.float64)


def full_dtype(tensors: list[torch.Tensor]) -> torch.dtype | None:
    """The dtype all `tensors` share when it is fp32 or fp64, else None (for `scale_tensors_`)."""
    dtypes = {t.dtype for t in tensors}
    dtype = dtypes.pop() if len(dtypes) == 1 else None
    return dtype if dtype in _FULL else None


@functools.lru_cache(maxsize=64)
def _cpu_scalar(value: float, dtype: torch.dtype) -> torch.Tensor:
    return torch.tensor(value, dtype=dtype, device="cpu")  # read only: shared by every call with this value


_FIND = object()


def scale_tensors_(tensors: list[torch.Tensor], scale: Any, dtype: Any = _FIND) -> None:
    """Multiply every tensor in place by `scale` (a number or a 0-d tensor), in one fused kernel per device.

    On the CPU a number goes in as a 0-d tensor of the tensors' own dtype when they share fp32 or fp64 (`dtype`:
    the caller's `full_dtype(tensors)`, found once, else found here). The products are bitwise torch's own for a
    number, which converts it to that dtype for each tensor, but faster: for the digits CNN's 10 gradients, a number
    takes 51 us, a 0-d float64 tensor 42 us (cast once per tensor), a 0-d fp32 one 18 us (measured alone on a
    2-core CPU). The 0-d tensors are kept, a few per run (one value per batch size)."""
    if not isinstance(scale, torch.Tensor) and tensors[0].device.type == "cpu":
        dtype = full_dtype(tensors) if dtype is _FIND else dtype
        if dtype is not None:
            scale = _cpu_scalar(float(scale), dtype)
    torch._foreach_mul_(tensors, scale)


def skip_on_device(optimizer):
    """For a prepared optimizer whose torch optimizer runs fused kernels (SGD, Adam, AdamW with fused=True, and no
    grad scaler): a function `arm(flag)` after which its next step skips the update on the device when `flag` (a
    0-d float tensor) is 1, leaving weights and state bitwise as they were; None for any other optimizer."""
    raw = getattr(optimizer, "optimizer", optimizer)
    fused = isinstance(raw, (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW)) and all(
        group.get("fused") for group in raw.param_groups)
    if not fused or getattr(optimizer, "scaler", None) is not None:
        return None

    def arm(flag: torch.Tensor) -> None:
        raw.found_inf = flag

    return arm


class _LeanAcceleratedOptimizer(AcceleratedOptimizer):
    """AcceleratedOptimizer without two per-step costs, for the plain case (no grad scaler, no XLA, no LOMO).

    Measured on a 2-core CPU with a small MLP (2.4 ms step): `step` calls `is_lomo_available()` twice per step,
    an uncached `importlib.util.find_spec` that stats every `sys.path` entry (~67 us each), and `zero_grad` runs
    `inspect.signature` on the wrapped optimizer every step (~44 us). Neither answer can change while a process
    runs; the other cases keep Accelerate's own code.
    """

    def step(self, closure=None):
        if self.gradient_state.sync_gradients:  # as Accelerate does: no step inside an accumulation window
            self.optimizer.step(closure)

    def zero_grad(self, set_to_none=None):
        if self.gradient_state.sync_gradients:  # as Accelerate does: gradients accumulate inside a window
            self.optimizer.zero_grad(set_to_none=True if set_to_none is None else set_to_none)


def trim_optimizer_overhead(optimizer) -> None:
    """Give a prepared plain optimizer the lean wrapper (a no-op for other wrappers, e.g. DeepSpeed's)."""
    from accelerate.utils import is_lomo_available

    plain = (type(optimizer) is AcceleratedOptimizer and optimizer.scaler is None
             and optimizer.accelerator_state.distributed_type != DistributedType.XLA and not is_lomo_available())
    if PATCH_ACCELERATE and plain and "set_to_none" in inspect.signature(optimizer.optimizer.zero_grad).parameters:
        optimizer.__class__ = _LeanAcceleratedOptimizer


def _backward(loss: torch.Tensor, **kwargs) -> None:
    loss.backward(**kwargs)


_NO_CONTEXT = nullcontext()


def _sync_every_batch(accelerator) -> Callable[..., Any]:
    """`accumulate` without accumulation: Accelerate's own bookkeeping (`_do_sync`: its step counter and
    `sync_gradients`, always True here), without building a generator context and an ExitStack per batch."""
    def accumulate(*models):
        accelerator._do_sync()
        return _NO_CONTEXT
    return accumulate


def trim_step_overhead(accelerator, model) -> None:
    """In the plain case (one process or DDP, no grad scaler, no DTensor parameters, no LOMO optimizer), the
    accelerator's `backward` and `clip_grad_norm_` become torch's own calls, bitwise the same.

    There Accelerate's `backward` divides the loss by the accumulation steps, an extra op and autograd node per
    micro-batch that is a division by 1 without accumulation (so only then is it skipped), and `clip_grad_norm_`
    parses torch's version and sorts the parameters by DTensor mesh on every call, before calling torch's
    `clip_grad_norm_`: 6 us per call over torch's 45 us, measured alone on the digits CNN on a 2-core CPU. Without
    accumulation `accumulate` is Accelerate's `_do_sync` alone (its step counter; every batch syncs), without the
    generator context and ExitStack it builds per batch.
    """
    from accelerate.utils import is_lomo_available

    plain = (accelerator.scaler is None and not is_lomo_available() and accelerator.distributed_type in (
        DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU))
    if not (PATCH_ACCELERATE and plain):
        return
    sharded = False  # tensor-parallel (DTensor) parameters keep Accelerate's mesh-aware clipping
    if torch.distributed.is_available():  # a torch built without it has no DTensor
        from torch.distributed.tensor import DTensor

        sharded = any(isinstance(p, DTensor) for p in model.parameters())
    if not sharded:
        accelerator.clip_grad_norm_ = torch.nn.utils.clip_grad_norm_
    if accelerator.gradient_accumulation_steps == 1:
        accelerator.backward = _backward
        accelerator.accumulate = _sync_every_batch(accelerator)


def fused_devices() -> list[str]:
    """Device types for which torch's SGD, Adam and AdamW have fused kernels."""
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices
    except ImportError:
        return ["cuda"]
    return _get_fused_kernels_supported_devices()


BACKGROUND_SAVES = (DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU)


@contextmanager
def captured_saves(snapshot: Callable[[Any], Any]) -> Iterator[list[Callable[[], None]]]:
    """Inside the block, what `accelerator.save_state` writes through Accelerate's `save` is not written: it is
    snapshotted now and collected as jobs (functions that write it later, from any thread). Everything else
    save_state writes (RNG states, the grad scaler, loader states) is written as usual. Only the writes this
    process would make are kept (Accelerate's `save` writes on the main process only)."""
    import accelerate.checkpointing as checkpointing
    from accelerate.state import PartialState

    original, jobs = checkpointing.save, []

    def capture(obj, f, save_on_each_node: bool = False, safe_serialization: bool = False):
        state = PartialState()
        if not (state.is_local_main_process if save_on_each_node else state.is_main_process):
            return
        kept = snapshot(obj)
        jobs.append(lambda: original(kept, f, save_on_each_node=save_on_each_node,
                                     safe_serialization=safe_serialization))

    checkpointing.save = capture
    try:
        yield jobs
    finally:
        checkpointing.save = original


def run_exit_handlers() -> None:
    """Run the atexit handlers now, as Python's own exit would before its teardown (`launch.leave`, which then
    ends the process without that teardown); each runs once."""
    import atexit

    atexit._run_exitfuncs()


def missing() -> list[str]:
    """The private names this module relies on that the installed accelerate or torch lacks."""
    import accelerate.checkpointing as checkpointing
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    checks = {
        "AcceleratorState._reset_state": hasattr(AcceleratorState, "_reset_state"),
        "GradientState._reset_state": hasattr(GradientState, "_reset_state"),
        "Accelerator.prepare reads _is_accelerate_prepared":
            "_is_accelerate_prepared" in inspect.getsource(Accelerator),
        "Accelerator.prepare_model sets _original_forward": "_original_forward" in inspect.getsource(Accelerator),
        "Accelerator._do_sync (what accumulate does per batch)": hasattr(Accelerator, "_do_sync")
            and "_do_sync" in inspect.getsource(Accelerator.accumulate),
        "Accelerator.backward divides by gradient_accumulation_steps":
            "gradient_accumulation_steps" in inspect.getsource(Accelerator.backward),
        "torch._foreach_mul_": hasattr(torch, "_foreach_mul_"),
        "torch.utils._foreach_utils._get_fused_kernels_supported_devices": "cpu" in fused_devices(),
        "fused optimizers read found_inf": all("found_inf" in inspect.getsource(kind.step)
                                               for kind in (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW)),
        "AcceleratedOptimizer.step and zero_grad": all(
            name in inspect.getsource(AcceleratedOptimizer) for name in
            ("def step", "def zero_grad", "self.gradient_state", "self.accelerator_state", "self.scaler")),
        "save_state writes through accelerate.checkpointing.save": hasattr(checkpointing, "save") and all(
            "save(" in inspect.getsource(fn) for fn in (checkpointing.save_accelerator_state,
                                                        checkpointing.save_custom_state)),
        "atexit._run_exitfuncs": hasattr(atexit, "_run_exitfuncs"),
    }
    return [name for name, present in checks.items() if not present]
