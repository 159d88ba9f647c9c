"""The gradient work of one optimizer step, kept out of the loop's sight, in three parts that each read alone:

    GradientWindow        normalise and clip: micro-batch losses are sums, so the gradients of an accumulation
                          window add up; `finish` divides them by the window's loss units (samples or tokens) over
                          all processes, which makes a short last window, a padded last batch or sequences of
                          different lengths count each unit exactly once, then clips.
    NonFiniteGuard        decides whether the step's loss and gradient norm are finite (skip, stop or off) and
                          whether to stop here (a SIGTERM/SIGINT or `stop_at_step` on any process), agreed by all
                          processes. On an accelerator, with an optimizer that can skip an update on the device
                          (torch's fused SGD, Adam, AdamW: `found_inf`), the verdict stays on the device and is
                          read one step later, so a step reads nothing back; otherwise (and on the CPU, where
                          the value is in host memory) it is one host read per optimizer step.
    UnusedParameterCheck  once, after the first backward: parameters that received no gradient.

Units and the guard's flags (not finite; asked to stop, per signal) travel in one all-reduce per optimizer step.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .errors import UserError
from .internals import full_dtype, gradient_divisor, scale_tensors_


class NonFiniteError(UserError):
    """A non-finite loss or gradient norm under the `stop` policy."""


def keeps_verdicts_on_device(device: torch.device) -> bool:
    """Whether the guard's verdicts stay on `device`, read one step later (see `NonFiniteGuard.defer_to`): on an
    accelerator, where reading one at once waits for the device's queue. Not on the CPU, where the value is in host
    memory already and reading it costs less than the deferral's own work (38 us a step, measured on a 1.4 ms step
    of a small CNN on a 2-core CPU); with several processes the all-reduce has waited for every process anyway."""
    return device.type != "cpu"


def _finite(loss: torch.Tensor | float, norm: torch.Tensor | None) -> bool:
    """Whether the loss and the norm (0-d tensors, a float for no loss) are finite: one host read."""
    values = [v for v in (loss, norm) if isinstance(v, torch.Tensor)]
    if not values:
        return True
    if values[0].device.type == "cpu":  # already in host memory: read each as it is, no op to run
        return all(math.isfinite(v.item()) for v in values)
    return bool(torch.isfinite(sum(values)))  # one device read for both: inf or nan in either is not finite


class NonFiniteGuard:
    """Whether this optimizer step may update the weights (`ok`) and whether the run stops after it (`stop`).

    Args:
        policy: `skip` (leave weights, optimizer and schedule untouched for a non-finite step), `stop` (raise
            NonFiniteError before the optimizer step) or `off` (no check).
        stop_requested: tells whether this process was asked to stop (a signal, `stop_at_step`). With several
            processes, a `checkpoint.StopRequest` also says why (`asked`) and learns what the processes agreed
            (`agree`), so that all of them name the same signal; any other callable is one flag.
    """

    def __init__(self, policy: str = "skip", stop_requested: Callable[[], bool] = lambda: False):
        self.policy, self.stop_requested = policy, stop_requested
        self.loss_sum: torch.Tensor | float = 0.0
        self.ok = True  # False after a non-finite window under `skip`: the loop leaves the optimizer alone
        self.stop = False  # agreed: every process stops after this step
        self.steps = 0  # optimizer steps decided so far
        self.skipped: list[int] = []  # indices (in `steps`) of skipped steps not yet taken by `take_skipped`
        self.arm: Callable[[torch.Tensor], None] | None = None  # set by `defer_to`
        self.pending = None  # (host copy of [not finite(, signalled)], copy event, index, schedule or None)

    def defer_to(self, arm: Callable[[torch.Tensor], None]) -> None:
        """Keep verdicts on the device: `arm(flag)` makes the coming optimizer step skip its update when `flag`
        is 1 (see `internals.skip_on_device`); the verdict is read when the next step is decided."""
        if self.policy != "off":
            self.arm = arm

    def take_skipped(self) -> list[int]:
        """How many steps ago each step skipped since the last call was (0: the step just decided)."""
        taken, self.skipped = [self.steps - 1 - index for index in self.skipped], []
        return taken

    def schedule(self, step: Callable[[], None]) -> None:
        """Advance the schedule for the step just taken: now, or once its deferred verdict says it updated."""
        if self.pending is None:
            step()
        else:
            self.pending = (*self.pending[:3], step)

    def settle(self) -> None:
        """Read the deferred verdict of the previous step (long computed by now) and act on it: count a skip (or
        raise under `stop`), advance the schedule for an update, note an agreed stop request."""
        if self.pending is None:
            return
        staged, event, index, schedule = self.pending
        self.pending = None
        if event is not None:
            event.synchronize()
        not_finite, *asked = staged.tolist()  # host memory, copied without blocking
        self.stop = self._agree(asked) or self.stop
        if not_finite:
            self.skipped.append(index)
            self._raise_under_stop()
        elif schedule is not None:
            schedule()

    def add(self, loss: torch.Tensor) -> None:
        if self.policy != "off":  # the window's first micro-batch: no addition
            self.loss_sum = loss.detach() if isinstance(self.loss_sum, float) else self.loss_sum + loss.detach()

    def local_flags(self, device) -> list[torch.Tensor]:
        """This process's "my loss is not finite" and "I was asked to stop" (a flag per reason), to be added up over
        processes."""
        if self.policy == "off" or not isinstance(self.loss_sum, torch.Tensor):
            not_finite = torch.zeros((), device=device)
        else:
            not_finite = (~torch.isfinite(self.loss_sum)).float()
        asked = getattr(self.stop_requested, "asked", None)
        asked = asked() if asked is not None else [float(self.stop_requested())]
        return [not_finite, *torch.tensor(asked).to(device, non_blocking=True)]  # no wait for the device's queue

    def _agree(self, asked: list[float]) -> bool:
        """Whether any process asked to stop, from the summed stop flags of `local_flags`."""
        agree = getattr(self.stop_requested, "agree", None)
        return agree(asked) if agree is not None else any(count > 0 for count in asked)

    def decide(self, grads: list[torch.Tensor], norm: torch.Tensor | None, flags: torch.Tensor | None,
               judge_gradients: bool = True) -> None:
        """Set `ok` and `stop` from the loss, the gradient norm (unless `judge_gradients` is off: fp16, where the
        grad scaler handles overflow) and (several processes) the summed flags: at most one host read (none in one
        process with policy `off`). All-reduced gradients are the same on every process, so their norm agrees by
        itself. Raises NonFiniteError under `stop`."""
        if self.policy == "off" or not judge_gradients:
            norm = None
        elif norm is None:
            norm = torch.nn.utils.get_total_norm(grads)
        if self.arm is not None and norm is not None:
            return self._defer(norm, flags)
        if flags is None:  # one process
            self.stop = self.stop_requested()
            self.ok = self.policy == "off" or _finite(self.loss_sum, norm)
        else:  # flags: [processes whose loss is not finite, processes asked to stop (per reason)], summed
            if norm is not None:
                flags = torch.cat([flags, (~torch.isfinite(norm)).float().reshape(1)])
            not_finite, *asked = flags.tolist()
            if norm is not None:
                not_finite += asked.pop()
            self.stop = self._agree(asked)
            self.ok = not_finite == 0
        self.loss_sum = 0.0
        self.steps += 1
        if not self.ok:
            self.skipped.append(self.steps - 1)
            self._raise_under_stop()

    def _defer(self, norm: torch.Tensor, flags: torch.Tensor | None) -> None:
        """The verdict as a device flag the optimizer skips on; its host copy is read by the next `settle`."""
        self.settle()
        loss = self.loss_sum if isinstance(self.loss_sum, torch.Tensor) else torch.zeros((), device=norm.device)
        if flags is None:  # one process: a stop request needs no agreement, only the verdict is staged
            flag = (~torch.isfinite(loss + norm)).float()
            staged = flag.reshape(1)
            self.stop = self.stop or self.stop_requested()
        else:  # flags: [processes whose loss is not finite, processes asked to stop (per reason)], summed
            flag = ((flags[0] > 0) | ~torch.isfinite(norm)).float()
            staged = torch.cat([flag.reshape(1), flags[1:].float()])
            due = getattr(self.stop_requested, "due", None)  # --stop-at-step is the same on every process
            self.stop = self.stop or bool(due and due())
        self.arm(flag)
        staged = staged.to("cpu", non_blocking=True)
        event = None
        if staged.device != flag.device and flag.device.type == "cuda":
            event = torch.cuda.Event()
            event.record()
        self.pending = (staged, event, self.steps, None)
        self.ok, self.loss_sum = True, 0.0  # the optimizer step runs; the device skips its update when not finite
        self.steps += 1

    def _raise_under_stop(self) -> None:
        if self.policy == "stop":
            raise NonFiniteError("the loss or gradient norm is not finite: training stopped before this optimizer "
                                 "step, so the latest checkpoint holds the last good weights. Lower --lr, clip with "
                                 "--max-grad-norm, check the data, or pass --nonfinite skip.")


class UnusedParameterCheck:
    """After the first backward: trainable parameters without a gradient are an error under DDP (which would hang
    or fail on them) and a warning in one process. Off when `allowed` (--find-unused-parameters)."""

    def __init__(self, named_parameters: list[tuple[str, torch.nn.Parameter]], allowed: bool = False):
        self.named, self.done = named_parameters, allowed

    def __call__(self, accelerator) -> None:
        if self.done:
            return
        self.done = True
        unused = [name for name, p in self.named if p.grad is None]
        if not unused:
            return
        shown = ", ".join(unused[:8]) + (f" and {len(unused) - 8} more" if len(unused) > 8 else "")
        message = (f"{len(unused)} parameter(s) received no gradient: {shown}. Freeze them "
                   "(requires_grad=False) or remove them from the model; if the model uses them only on some "
                   "steps, set --find-unused-parameters true.")
        if accelerator.num_processes > 1:
            raise UserError(message)
        accelerator.print(f"warning: {message}")


class GradientWindow:
    """Per-step gradient bookkeeping for `train_step`: `loss` and `add` each micro-batch, `finish` once per window.

    Args:
        max_grad_norm, clip_value: clipping, applied once per optimizer step.
        guard: the non-finite and stop decision (default: skip non-finite steps, never stop).
        allow_unused: do not check for parameters that received no gradient.
    """

    def __init__(self, accelerator, model, max_grad_norm: float | None = None, clip_value: float | None = None,
                 guard: NonFiniteGuard | None = None, allow_unused: bool = False):
        self.accelerator = accelerator
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.params = [p for _, p in named]
        self.dtype = full_dtype(self.params)  # fp32 or fp64 gradients: scaled by a 0-d tensor on the CPU
        self.max_grad_norm, self.clip_value = max_grad_norm, clip_value
        self.guard = guard or NonFiniteGuard()
        self.check_unused = UnusedParameterCheck(named, allow_unused)
        self.sums_loss = accelerator.distributed_type.value != "DEEPSPEED"  # DeepSpeed owns its gradients
        self.units: torch.Tensor | int = 0
        self.norm: torch.Tensor | None = None

    @property
    def ok(self) -> bool:
        return self.guard.ok

    @property
    def stop(self) -> bool:
        return self.guard.stop

    def step_schedule(self, scheduler) -> None:
        """Advance `scheduler` for the optimizer step just taken (at once, or when its deferred verdict is read)."""
        self.guard.schedule(scheduler.step)

    def settle(self) -> None:
        """Act on a deferred verdict now (before logging, checkpoints and epoch ends)."""
        self.guard.settle()

    def loss(self, loss: torch.Tensor, count) -> torch.Tensor:
        """The tensor to back-propagate: the sum (normalised in `finish`), or a mean for DeepSpeed."""
        return loss if self.sums_loss else loss / count

    def add(self, loss: torch.Tensor, count) -> None:
        self.units = self.units + count
        self.guard.add(loss)

    def finish(self) -> None:
        """Close the window: normalise, clip, let the guard decide; then `ok` and `stop` hold for this step."""
        self.check_unused(self.accelerator)
        grads = [p.grad for p in self.params if p.grad is not None]
        flags = None
        if self.accelerator.num_processes == 1:
            units = self.units.clamp(min=1) if isinstance(self.units, torch.Tensor) else max(self.units, 1)
        else:  # units and the guard's flags: one all-reduce for all three
            device = self.accelerator.device
            totals = torch.stack([torch.as_tensor(self.units, device=device, dtype=torch.float32),
                                  *self.guard.local_flags(device)])
            totals = self.accelerator.reduce(totals, reduction="sum")
            units, flags = totals[0].clamp(min=1), totals[1:]
        if self.sums_loss and grads:
            scale_tensors_(grads, gradient_divisor(self.accelerator) / units, self.dtype)
        scaler = self.accelerator.scaler  # fp16: gradients are scaled by the GradScaler's factor until unscaled
        if self.max_grad_norm:
            self.norm = self.accelerator.clip_grad_norm_(self.params, self.max_grad_norm)  # unscales first
        else:
            if self.clip_value:
                self.accelerator.clip_grad_value_(self.params, self.clip_value)  # unscales first
            elif scaler is not None:
                self.accelerator.unscale_gradients()  # the guard and the optimizer see true gradients
            # logged at the logging steps; stays on the device (the guard judges this same tensor)
            self.norm = torch.nn.utils.get_total_norm(grads) if grads and self.sums_loss else None
        self.units = 0
        # Under fp16 an overflowing gradient is the scaler's business: its step skips the update and backs the scale
        # off, as it is meant to in the first steps. The guard judges the loss alone there.
        self.guard.decide(grads, None if scaler is not None else self.norm, flags, judge_gradients=scaler is None)
        if not self.ok and scaler is not None:
            scaler.update()  # the unscaled window is not stepped: the scaler's next window starts clean
