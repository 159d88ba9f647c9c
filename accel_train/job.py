"""Jobs for `accel-train train --config JOB.yaml`: a job builds a model, its data and its task; `fit` trains them.

A job is named in the YAML by `class_path` (a built-in one in `accel_train.tasks`, or your own `mypackage.MyJob`
subclass of `Job`) and configured by its fields under `init_args`, each also a flag: `--job.channels 16`.
The example scripts take the same job class as their options, so a script and its job share one front door.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .task import Task


@dataclass
class Parts:
    """What a job hands to `fit()`."""

    model: Any
    train_data: Any
    eval_data: Any
    task: Task
    collate_fn: Any = None
    processor: Any = None  # a tokenizer or processor, saved beside the final model in <run>/model/


class Job:
    """Base class of jobs: subclasses are dataclasses whose fields are the job's options."""

    def build(self, seed: int) -> Parts:  # pragma: no cover - interface
        raise NotImplementedError

    def record(self) -> dict[str, Any]:
        """The job as it would be written in YAML."""
        kind = type(self)
        args = dataclasses.asdict(self) if dataclasses.is_dataclass(self) else {}
        return {"class_path": f"{kind.__module__}.{kind.__qualname__}", "init_args": args}
