"""Built-in jobs for `accel-train train --config JOB.yaml`: each builds a model, its data and its task.

A job is named in the YAML by `class_path` (a built-in one below, or your own `mypackage.MyJob` subclass of
`Job`) and configured by its constructor arguments under `init_args`, each also a flag: `--job.channels 16`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..task import Task


@dataclass
class Parts:
    """What a job hands to `fit()`."""

    model: Any
    train_data: Any
    eval_data: Any
    task: Task
    collate_fn: Any = None


class Job:
    """Base class of jobs: subclasses are dataclasses whose fields are the job's options."""

    def build(self, seed: int) -> Parts:  # pragma: no cover - interface
        raise NotImplementedError

    def record(self) -> dict[str, Any]:
        """The job as it would be written in YAML."""
        kind = type(self)
        args = dataclasses.asdict(self) if dataclasses.is_dataclass(self) else {}
        return {"class_path": f"{kind.__module__}.{kind.__qualname__}", "init_args": args}

    def after_fit(self, summary: dict[str, Any], run_dir: str) -> None:
        """Save what the run folder needs beyond the weights (a tokenizer, a processor). Nothing by default."""


from .digits import Digits  # noqa: E402
from .cifar10 import Cifar10  # noqa: E402
from .text import CausalLM, TextClassification  # noqa: E402
from .clip import ClipDigits, ClipFinetune, FusionDigits  # noqa: E402

__all__ = ["Job", "Parts", "Digits", "Cifar10", "TextClassification", "CausalLM", "ClipDigits", "ClipFinetune",
           "FusionDigits"]
