"""The training loop: `train_step`, `train_one_epoch`, `evaluate`. Read this file first.

The classic PyTorch loop, with Accelerate doing the device work:

    train mode -> batch -> forward -> loss -> backward -> clip -> step -> zero_grad -> metrics
    eval mode + no_grad -> batch -> forward -> gather -> metrics

What differs between vision, language and multimodal models (the batch's shape, the loss, the metrics) lives in
the `Task`; what happens around the loop (building, logging, checkpoints) lives in `fit.py`.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from .data import real_samples
from .metrics import MetricSet
from .task import Output, Task


def train_step(accelerator, model, task: Task, batch, optimizer, scheduler, grads: GradientWindow,
               valid: int | None = None) -> tuple[Output, torch.Tensor, torch.Tensor | int]:
    """One micro-batch; an optimizer step when it closes an accumulation window.

    `valid` keeps only the first samples of a padded last batch (see `data.real_samples`).
    """
    with accelerator.accumulate(model):  # DDP all-reduces only on the window's last micro-batch
        out = task(model, batch)
        loss, count = out.total(valid)  # summed over samples (or tokens); normalised in grads.finish
        accelerator.backward(grads.loss(loss, count))
        grads.add(count)
        if accelerator.sync_gradients:  # the window is complete: normalise and clip once, then step
            grads.finish(model)
        optimizer.step()  # no-op inside a window
        if accelerator.sync_gradients and not optimizer.step_was_skipped:  # fp16 overflow skips the step
            scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    return out, loss, count


def train_one_epoch(accelerator, model, task: Task, loader, optimizer, scheduler, grads: GradientWindow,
                    meter: Meter) -> Iterator[None]:
    """Train on every batch of `loader`, yielding after each optimizer step (the caller logs and checkpoints)."""
    model.train()
    for batch in loader:
        valid = real_samples(loader, accelerator.num_processes, accelerator.process_index)
        out, loss, count = train_step(accelerator, model, task, batch, optimizer, scheduler, grads, valid)
        meter.update(out, loss, count, valid)
        if accelerator.sync_gradients:
            yield


@torch.no_grad()
def evaluate(accelerator, model, task: Task, loader) -> dict[str, float]:
    """Loss and metrics over the whole `loader`, each sample counted once across processes."""
    if loader is None:
        return {}
    model.eval()
    metrics = task.make_metrics()
    loss_sum = units = torch.zeros((), device=accelerator.device, dtype=torch.float64)
    samples = 0
    for batch in loader:
        out = task(model, batch)
        counts = out.counts if out.counts is not None else torch.ones_like(out.losses)
        # gather_for_metrics drops the samples Accelerate repeated to even out the last batch
        losses, counts = accelerator.gather_for_metrics((out.losses.detach(), counts))
        loss_sum = loss_sum + losses.double().sum()
        units = units + counts.double().sum()
        samples += len(losses)
        if metrics.metrics:
            metrics.update(*accelerator.gather_for_metrics((out.predictions, out.targets)))
    return {"loss": float(loss_sum / units.clamp(min=1)), **metrics.compute(), "samples": samples}


class GradientWindow:
    """The gradient work of one optimizer step, outside the loop's sight.

    Micro-batch losses are sums, so the gradients of a window add up; `finish` divides them by the window's
    loss units (samples or tokens) on all processes, which makes a short last window, a padded last batch or
    sequences of different lengths count each unit once. Then it clips, and once checks for parameters that
    received no gradient.
    """

    def __init__(self, accelerator, model, max_grad_norm: float | None = None, clip_value: float | None = None,
                 allow_unused: bool = False):
        self.accelerator = accelerator
        self.named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.params = [p for _, p in self.named]
        self.max_grad_norm, self.clip_value = max_grad_norm, clip_value
        self.sums_loss = accelerator.distributed_type.value != "DEEPSPEED"  # DeepSpeed owns its gradients
        self.units: torch.Tensor | int = 0
        self.norm: torch.Tensor | None = None
        self.checked = allow_unused

    def loss(self, loss: torch.Tensor, count) -> torch.Tensor:
        return loss if self.sums_loss else loss / count

    def add(self, count) -> None:
        self.units = self.units + count

    def finish(self, model) -> None:
        if not self.checked:
            self._check_unused()
        if self.sums_loss:
            # DDP averaged over processes and Accelerate divided by grad_accum: undo both, divide by the units.
            factor = self.accelerator.num_processes * self.accelerator.gradient_accumulation_steps
            if self.accelerator.num_processes > 1 or isinstance(self.units, torch.Tensor):
                total = torch.as_tensor(self.units, device=self.accelerator.device, dtype=torch.float32)
                if self.accelerator.num_processes > 1:
                    total = self.accelerator.reduce(total, reduction="sum")
                scale = factor / total.clamp(min=1)
            else:  # one process, units counted on the host: no tensor work
                scale = factor / max(self.units, 1)
            grads = [p.grad for _, p in self.named if p.grad is not None]
            if grads:
                torch._foreach_mul_(grads, scale)
        self.units = 0
        if self.max_grad_norm:
            self.norm = self.accelerator.clip_grad_norm_(self.params, self.max_grad_norm)
        elif self.clip_value:
            self.accelerator.clip_grad_value_(self.params, self.clip_value)

    def _check_unused(self) -> None:
        from .errors import UserError

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


class Meter:
    """Training loss, loss units, samples and metrics of one epoch, summed on the device; read at log time."""

    def __init__(self, accelerator, metrics: MetricSet):
        self.accelerator, self.metrics = accelerator, metrics
        self.reset()

    def reset(self) -> None:
        self.loss = torch.zeros((), device=self.accelerator.device, dtype=torch.float64)
        self.units: torch.Tensor | int = 0
        self.samples = 0
        self.logged = (0.0, 0.0)  # (loss, units) over all processes at the last interval_loss()
        self.metrics.reset()

    def update(self, out: Output, loss: torch.Tensor, count, valid: int | None) -> None:
        self.loss.add_(loss.detach())
        self.units = self.units + count
        self.samples += len(out.losses) if valid is None else valid
        if self.metrics.metrics:
            with torch.no_grad():
                self.metrics.update(out.predictions[:valid].detach(), out.targets[:valid])

    def _totals(self) -> list[float]:
        """(loss, units, samples) summed over processes: one host read."""
        totals = torch.stack([self.loss, torch.as_tensor(self.units, device=self.loss.device).double(),
                              torch.tensor(float(self.samples), device=self.loss.device, dtype=torch.float64)])
        if self.accelerator.num_processes > 1:
            totals = self.accelerator.reduce(totals, reduction="sum")
        return totals.tolist()

    def interval_loss(self) -> float:
        """Mean loss per unit since the previous call, over all processes."""
        loss, units, _ = self._totals()
        (last_loss, last_units), self.logged = self.logged, (loss, units)
        return (loss - last_loss) / max(units - last_units, 1.0)

    def compute(self) -> dict[str, float]:
        """The epoch's loss and metrics over all processes; sets `samples` to the all-process count."""
        loss, units, samples = self._totals()
        self.metrics.reduce(self.accelerator)
        self.samples = int(samples)
        return {"loss": loss / max(units, 1.0), **self.metrics.compute()}
