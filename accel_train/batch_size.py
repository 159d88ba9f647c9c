"""--auto-batch-size: the largest per-device batch that fits, found before training, with the effective batch kept.

On an out-of-memory error the per-device batch steps down through the divisors of the asked-for size (64, 32, 16,
...) and gradient accumulation grows by the same factor, so batch x processes x accumulation, the schedule and what
is learned stay as configured. Accelerate's `find_executable_batch_size` drives the retries. The probe is one
forward and backward pass on the first training batch in training mode (the model's buffers, such as batch-norm
statistics, and the random state are left as they were); the optimizer's state is allocated at the first real step,
so leave it headroom.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch.utils.data import DataLoader

from .config import TrainConfig
from .errors import UserError


def fit_batch_size(accelerator, cfg: TrainConfig, model: torch.nn.Module, task, train_data: Any,
                   collate_fn) -> TrainConfig:
    """`cfg` with the batch size that fits and the accumulation that keeps the effective batch; all processes
    agree on the smallest one found. Sets the Accelerator's accumulation to match."""
    if isinstance(train_data, DataLoader):
        raise UserError("--auto-batch-size needs a dataset, not a DataLoader (a DataLoader's batch size is fixed). "
                        "Pass the dataset, or drop --auto-batch-size.")
    from accelerate.utils import find_executable_batch_size, send_to_device

    sizes = [b for b in range(cfg.batch_size, 0, -1) if cfg.batch_size % b == 0]

    def smaller() -> int:
        sizes.pop(0)
        return sizes[0] if sizes else 0

    model.to(accelerator.device)
    buffers = {name: value.clone() for name, value in model.named_buffers()}
    rng = torch.random.get_rng_state()

    @find_executable_batch_size(starting_batch_size=cfg.batch_size, reduce_batch_size_fn=smaller)
    def probe(batch_size: int) -> int:
        batch = next(iter(DataLoader(train_data, batch_size=batch_size, collate_fn=collate_fn)))
        model.train()
        with accelerator.autocast():
            loss = task.for_run()(model, send_to_device(batch, accelerator.device)).total()[0]
        loss.backward()
        model.zero_grad(set_to_none=True)
        return batch_size

    try:
        found = probe()
    except RuntimeError as error:
        if "No executable batch size found" not in str(error):
            raise
        raise UserError("--auto-batch-size: no per-device batch fits in memory, not even 1 sample (one forward and "
                        "backward on the first training batch). Try --gradient-checkpointing, --mixed-precision bf16 "
                        "or a smaller model.") from None
    finally:
        with torch.no_grad():
            for name, value in model.named_buffers():
                value.copy_(buffers[name])
        torch.random.set_rng_state(rng)
    if accelerator.num_processes > 1:
        found = int(accelerator.gather(torch.tensor([found], device=accelerator.device)).min())
    accum = cfg.grad_accum * (cfg.batch_size // found)
    accelerator.gradient_accumulation_steps = accum
    return dataclasses.replace(cfg, batch_size=found, grad_accum=accum)  # validation: --eval-batch-size, or this
