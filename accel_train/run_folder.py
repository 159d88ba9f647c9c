"""The run folder: what a run leaves behind, for scripts and tests to read instead of stdout.

    config.yaml       the resolved configuration
    plan.json         devices, processes, precision in effect, batches, steps, package versions
    metrics.jsonl     one JSON line per logging step ("kind": "step") and per epoch ("kind": "epoch")
    checkpoints/      save_state checkpoints (see checkpoint.py)
    model.safetensors the final weights
    summary.json      best epoch and metric, final metrics, wall time, samples/s, processes, precision, the
                      performance monitor's figures and the data-wait verdict
    trackers.json     the W&B and MLflow run ids, reused on resume; tensorboard/, wandb/, mlruns/ (see tracking.py)
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import yaml
from accelerate.tracking import GeneralTracker

from .checkpoint import write_json
from .errors import UserError
from .faults import write_faults
from .run_lock import LOCK


class JsonlTracker(GeneralTracker):
    """An Accelerate tracker writing `metrics.jsonl`: `accelerator.log(values, step)` appends one line."""

    name = "jsonl"
    requires_logging_directory = True
    main_process_only = True

    def __init__(self, run_dir: str | Path):
        super().__init__()
        self.path = Path(run_dir) / "metrics.jsonl"
        self._handle = None

    @property
    def tracker(self):
        return self._handle

    def start(self) -> None:
        self._handle = open(self.path, "a", buffering=1)

    def store_init_configuration(self, values: dict) -> None:
        pass

    def log(self, values: dict, step: int | None = None, kind: str | None = None, **kwargs) -> None:
        """`kind` ("step" or "epoch") is written here only: `accelerator.log(..., log_kwargs={"jsonl": ...})`."""
        with write_faults(self.path.parent, "writing metrics.jsonl"):
            if self._handle is None:
                self.start()
            self._handle.write(json.dumps({"step": step, **({"kind": kind} if kind else {}), **values}) + "\n")

    def finish(self) -> None:
        if self._handle is not None:
            handle, self._handle = self._handle, None
            try:
                handle.close()
            except OSError:  # the line that met a full disk: already reported by `log`
                pass


def default_run_dir(name: str) -> Path:
    return Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def check_run_dir(run_dir: Path, resuming: bool, auto: bool = False) -> None:
    """A new run needs a new (or empty) folder: never train over another run's files."""
    if resuming or not run_dir.exists():
        return
    if not run_dir.is_dir():
        raise UserError(f"--output-dir {run_dir} is a file, not a folder.")
    if any(path.name != LOCK for path in run_dir.iterdir()):
        if auto:
            raise UserError(f"--resume auto: {run_dir} holds a run but no complete checkpoint to continue from. "
                            "Remove the folder to start over, or choose another --output-dir.")
        raise UserError(f"--output-dir {run_dir} already holds another run. Choose a new --output-dir, or pass "
                        "--resume auto to continue that run.")


def write_config(run_dir: Path, config: dict[str, Any]) -> None:
    tmp = run_dir / ".config.yaml.tmp"
    tmp.write_text(yaml.safe_dump(config, sort_keys=False))
    tmp.replace(run_dir / "config.yaml")


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    write_json(run_dir / "summary.json", summary)


def read_summary(run_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(run_dir) / "summary.json").read_text())


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    rows = []
    for number, line in enumerate(lines, 1):
        try:
            rows.append(json.loads(line))
        except ValueError:
            if number < len(lines):
                raise
            # a last line cut short (a full disk, a kill mid-write) was never logged: resuming drops it
    return rows
