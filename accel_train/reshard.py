"""Resuming on a different number of processes (preemptible clusters hand back fewer devices than they took).

The global batch (per-device batch x processes x accumulation) must stay what the checkpoint trained with, or the
optimisation would change: such a resume is refused, naming a per-device batch that keeps it. With it kept, the
data order is the same (seed + epoch decide it, for any process count), the schedule has the same number of
steps, and only two things depend on the process count: the position in the epoch, counted in each process's
micro-batches, is converted through the samples already trained; and the running epoch sums, one file per
process, are added up on the main process (they are only ever read added up).
"""

from __future__ import annotations

from pathlib import Path

import torch

from .checkpoint import Progress, load_meter
from .errors import UserError


def saved_processes(path: Path) -> int:
    """The processes that wrote checkpoint `path` (each writes its own `meter_<rank>.safetensors`)."""
    return max(1, len(list(path.glob("meter_*.safetensors"))))


def check_layout(progress: Progress, path: Path, batch_size: int, grad_accum: int, processes: int) -> None:
    """Refuse a resume that changes the global batch; convert the position in the epoch to this layout."""
    before = saved_processes(path)
    if progress.batch_size is None:  # a checkpoint from before the layout was recorded
        if before != processes:
            raise UserError(f"--resume {path}: the checkpoint was written by {before} process(es) and does not "
                            f"record its batch size; resume it on {before} process(es).")
        return
    old = progress.batch_size * before * progress.grad_accum
    new = batch_size * processes * grad_accum
    if old != new:
        hint = ""
        if old % (processes * grad_accum) == 0:
            hint = f" Keep {old}: --batch-size {old // (processes * grad_accum)} with --grad-accum {grad_accum}."
        elif old % (processes * batch_size) == 0:
            hint = f" Keep {old}: --grad-accum {old // (processes * batch_size)} with --batch-size {batch_size}."
        raise UserError(f"--resume {path}: the checkpoint trained with a global batch of {old} "
                        f"({progress.batch_size} per device x {before} process(es) x {progress.grad_accum} "
                        f"accumulation); this launch gives {new} ({batch_size} x {processes} x {grad_accum}), which "
                        f"would change the training.{hint}")
    trained = progress.batch_in_epoch * progress.batch_size * before  # samples of this epoch already trained
    progress.batch_in_epoch = trained // (batch_size * processes)


def load_meters(path: Path, meter, process_index: int, processes: int) -> None:
    """This process's running epoch sums; under another process count the main process takes them all."""
    if saved_processes(path) == processes:
        load_meter(path, meter, process_index)
        return
    from safetensors.torch import load_file

    states = [load_file(str(file)) for file in sorted(path.glob("meter_*.safetensors"))]
    shared = ("logged", "units_on_host")  # the same on every process: the last logged totals, a type flag
    keys = dict.fromkeys(key for state in states for key in state)
    summed = {key: sum(state[key] for state in states if key in state) for key in keys if key not in shared}
    if process_index != 0:
        summed = {key: torch.zeros_like(value) for key, value in summed.items()}
    meter.load_state_dict({**summed, **{key: states[0][key] for key in shared}})
