"""The gradient work of one optimizer step, kept out of the loop's sight: normalise, clip, check, agree.

Micro-batch losses are sums, so the gradients of an accumulation window add up; `finish` divides them by the
window's loss units (samples or tokens) on all processes, which makes a short last window, a padded last batch or
sequences of different lengths count each unit exactly once. It then clips, checks that the loss and gradient norm
are finite, and agrees with the other processes on two flags: "this window is not finite" and "stop here" (a
SIGTERM/SIGINT or `stop_at_step` on any process). Units and both flags travel in one all-reduce per step.
"""

from __future__ import annotations

import torch

from .errors import UserError


class NonFiniteError(UserError):
    """A non-finite loss or gradient norm under the `stop` policy."""


class GradientWindow:
    """Per-step gradient bookkeeping for `train_step`.

    Args:
        max_grad_norm, clip_value: clipping, applied once per optimizer step.
        nonfinite: `skip` (leave weights, optimizer and schedule untouched for that step), `stop` (raise
            NonFiniteError before the optimizer step) or `off` (no check).
        allow_unused: do not check for parameters that received no gradient.
        stop_requested: a callable telling whether this process was asked to stop (a signal, `stop_at_step`).
    """

    def __init__(self, accelerator, model, max_grad_norm: float | None = None, clip_value: float | None = None,
                 nonfinite: str = "skip", allow_unused: bool = False, stop_requested=lambda: False):
        self.accelerator = accelerator
        self.named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.params = [p for _, p in self.named]
        self.max_grad_norm, self.clip_value, self.nonfinite = max_grad_norm, clip_value, nonfinite
        self.sums_loss = accelerator.distributed_type.value != "DEEPSPEED"  # DeepSpeed owns its gradients
        self.stop_requested = stop_requested
        self.units: torch.Tensor | int = 0
        self.loss_sum: torch.Tensor | float = 0.0
        self.norm: torch.Tensor | None = None
        self.checked = allow_unused
        self.ok = True  # False after a non-finite window under `skip`: the loop leaves the optimizer alone
        self.stop = False  # agreed: every process stops after this step

    def loss(self, loss: torch.Tensor, count) -> torch.Tensor:
        """The tensor to back-propagate: the sum (normalised later), or a mean for DeepSpeed."""
        return loss if self.sums_loss else loss / count

    def add(self, loss: torch.Tensor, count) -> None:
        self.units = self.units + count
        if self.nonfinite != "off":
            self.loss_sum = self.loss_sum + loss.detach()

    def finish(self) -> None:
        """Close the window: normalise, clip, check finiteness, agree on the flags; sets `ok` and `stop`."""
        if not self.checked:
            self._check_unused()
        grads = [p.grad for p in self.params if p.grad is not None]
        factor = self.accelerator.num_processes * self.accelerator.gradient_accumulation_steps
        flags = None
        if self.accelerator.num_processes == 1:
            units = self.units.clamp(min=1) if isinstance(self.units, torch.Tensor) else max(self.units, 1)
            scale = factor / units
        else:  # units, "my loss is not finite", "I was asked to stop": one all-reduce for all three
            device = self.accelerator.device
            totals = torch.stack([torch.as_tensor(self.units, device=device, dtype=torch.float32),
                                  self._loss_not_finite(device), torch.tensor(float(self.stop_requested()),
                                                                              device=device)])
            totals = self.accelerator.reduce(totals, reduction="sum")
            scale, flags = factor / totals[0].clamp(min=1), totals[1:]  # DDP averaged, Accelerate divided by k
        if self.sums_loss and grads:
            torch._foreach_mul_(grads, scale)
        if self.max_grad_norm:
            self.norm = self.accelerator.clip_grad_norm_(self.params, self.max_grad_norm)
        elif self.clip_value:
            self.accelerator.clip_grad_value_(self.params, self.clip_value)
        self._read_flags(grads, flags)
        self.units, self.loss_sum = 0, 0.0
        if not self.ok and self.nonfinite == "stop":
            raise NonFiniteError("the loss or gradient norm is not finite: training stopped before this optimizer "
                                 "step, so the latest checkpoint holds the last good weights. Lower --lr, clip with "
                                 "--max-grad-norm, check the data, or pass --nonfinite skip.")
        if not self.ok and self.accelerator.scaler is not None:
            self.accelerator.scaler.update()  # fp16: leave the grad scaler ready for the next step

    def _loss_not_finite(self, device) -> torch.Tensor:
        if self.nonfinite == "off" or not isinstance(self.loss_sum, torch.Tensor):
            return torch.zeros((), device=device)
        return (~torch.isfinite(self.loss_sum)).float()

    def _read_flags(self, grads, flags: torch.Tensor | None) -> None:
        """Set `ok` and `stop` with at most one host read per optimizer step (none in one process with
        --nonfinite off). All-reduced gradients are the same on every process, so their norm agrees by itself."""
        norm = None
        if self.nonfinite != "off":
            norm = self.norm if self.norm is not None else torch.nn.utils.get_total_norm(grads)
        if flags is None:  # one process
            self.stop = self.stop_requested()
            loss = self.loss_sum if isinstance(self.loss_sum, torch.Tensor) else 0.0
            self.ok = norm is None or bool(torch.isfinite(loss + norm))  # inf or nan in either: not finite
            return
        if norm is not None:
            flags = torch.cat([flags, (~torch.isfinite(norm)).float().reshape(1)])
        values = flags.tolist()
        self.stop = values[1] > 0
        self.ok = values[0] == 0 and (norm is None or values[2] == 0)

    def _check_unused(self) -> None:
        self.checked = True
        unused = [name for name, p in self.named if p.grad is None]
        if not unused:
            return
        shown = ", ".join(unused[:8]) + (f" and {len(unused) - 8} more" if len(unused) > 8 else "")
        message = (f"{len(unused)} parameter(s) received no gradient: {shown}. Freeze them "
                   "(requires_grad=False) or remove them from the model; if the model uses them only on some "
                   "steps, set --find-unused-parameters true.")
        if self.accelerator.num_processes > 1:
            raise UserError(message)
        self.accelerator.print(f"warning: {message}")
