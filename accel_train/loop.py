"""The training loop: `train_step`, `train_one_epoch`, `evaluate`. Read this file first.

The classic PyTorch loop, with Accelerate doing the device work:

    train mode -> batch -> forward -> loss -> backward -> clip -> step -> zero_grad -> metrics
    eval mode + no_grad -> batch -> forward -> gather -> metrics

What differs between vision, language and multimodal models (the batch's shape, the loss, the metrics) lives in
the `Task`; what happens around the loop lives in `fit.py` (building) and `epochs.py` (logging, checkpoints).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from .data import TrainBatches, reads_own_shard
from .gradients import GradientWindow
from .metrics import Meter, add_up_processes
from .task import Output, Task


def train_step(accelerator, model, task: Task, batch, optimizer, scheduler, grads: GradientWindow,
               valid: int | None = None) -> tuple[Output, torch.Tensor, torch.Tensor | int]:
    """One micro-batch; an optimizer step when it closes an accumulation window.

    `valid` keeps only the first samples of a padded last batch (see `data.TrainBatches`).
    """
    with accelerator.accumulate(model):  # DDP all-reduces only on the window's last micro-batch
        out = task(model, batch)
        loss, count = out.total(valid)  # summed over samples (or tokens); normalised in grads.finish
        accelerator.backward(grads.loss(loss, count))
        grads.add(loss, count)
        if accelerator.sync_gradients:  # the window is complete: normalise, clip and check once
            grads.finish()
        if grads.ok:  # False only for a non-finite window under --nonfinite skip
            optimizer.step()  # a no-op inside a window
            if accelerator.sync_gradients and not optimizer.step_was_skipped:  # fp16 overflow skips the step
                grads.step_schedule(scheduler)  # now, or once a verdict kept on the device is read
        optimizer.zero_grad(set_to_none=True)
    return out, loss, count


def train_one_epoch(accelerator, model, task: Task, batches: TrainBatches, optimizer, scheduler,
                    grads: GradientWindow, meter: Meter) -> Iterator[None]:
    """Train on every batch of `batches`, yielding after each optimizer step (the caller logs and checkpoints)."""
    model.train()
    for batch, valid in batches:
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
    # gather_for_metrics drops the samples Accelerate repeated to even out the last batch. Processes that read
    # their own shard may hold different numbers of batches: no collective per batch (nor DDP's forward), their
    # sums are added up once at the end.
    own_shard = reads_own_shard(loader)
    collect = (lambda values: values) if own_shard else accelerator.gather_for_metrics
    model = accelerator.unwrap_model(model) if own_shard else model
    for batch in loader:
        out = task(model, batch)
        counts = out.counts if out.counts is not None else torch.ones_like(out.losses)
        wanted = (out.predictions, out.targets) if metrics.metrics else ()
        losses, counts, *seen = collect((out.losses.detach(), counts, *wanted))  # one gather per batch
        loss_sum = loss_sum + losses.double().sum()
        units = units + counts.double().sum()
        samples += len(losses)
        if seen:
            metrics.update(*seen)
    if own_shard and accelerator.num_processes > 1:
        loss_sum, units, samples = add_up_processes(metrics, loss_sum, units, samples)
    return {"loss": float(loss_sum / units.clamp(min=1)), **metrics.compute(), "samples": samples}
