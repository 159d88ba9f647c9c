"""The run's progress as a state object, and checkpoints that are either complete or invisible.

A checkpoint is `accelerator.save_state` (model, optimizer, schedulers, grad scaler, every process's RNG) plus
`progress.json` (this module's `Progress`). It is written into `checkpoints/.tmp-<name>/` by every process, then
the main process writes a `COMPLETE` marker and renames the folder into place: a kill mid-save leaves only a
temporary folder that resuming ignores. One writer per file; the temporary and final folders share a parent, so
the rename stays on one filesystem.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import UserError

MARKER = "COMPLETE"
PROGRESS = "progress.json"


@dataclass
class Progress:
    """Where the run is; saved in every checkpoint and restored on resume."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps completed
    samples: int = 0  # training samples seen (all processes)
    best_metric: float | None = None
    best_epoch: int | None = None
    best_checkpoint: str | None = None
    history: list[dict] = field(default_factory=list)  # per-epoch train/val metrics

    def improved(self, value: float, mode: str) -> bool:
        if self.best_metric is None:
            return True
        return value > self.best_metric if mode == "max" else value < self.best_metric


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: Path, data) -> None:
    """Write JSON atomically: a temporary file in the same folder, fsync, rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as handle:
        json.dump(data, handle, indent=2, default=str)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def is_complete(path: Path) -> bool:
    return (path / MARKER).is_file() and (path / PROGRESS).is_file()


def complete_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under `root`, oldest first (by the step recorded in each)."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and is_complete(p)]
    return sorted(found, key=lambda p: (read_progress(p).step, p.name))


def read_progress(path: Path) -> Progress:
    try:
        return Progress(**json.loads((path / PROGRESS).read_text()))
    except (OSError, ValueError, TypeError) as error:
        raise UserError(f"checkpoint {path} is damaged ({PROGRESS}: {error}). Resume from another checkpoint.") from None


class Checkpointer:
    """Saves and finds checkpoints under `<run>/checkpoints`, keeping the newest `keep` and the best one."""

    def __init__(self, run_dir: Path, keep: int = 1):
        self.root = Path(run_dir) / "checkpoints"
        self.keep = keep

    def save(self, accelerator, progress: Progress, name: str) -> Path:
        final, tmp = self.root / name, self.root / f".tmp-{name}"
        if accelerator.is_main_process:
            self.root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            write_json(tmp / PROGRESS, asdict(progress))
            (tmp / MARKER).write_text(f"step {progress.step}\n")
            _fsync_dir(tmp)
            if final.exists():  # re-saving the same step: replace the old copy only after the new one is whole
                old = self.root / f".old-{name}"
                os.replace(final, old)
                os.replace(tmp, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, final)
            _fsync_dir(self.root)
            self.prune(progress.best_checkpoint)
        accelerator.wait_for_everyone()
        return final

    def prune(self, best: str | None) -> None:
        """Delete complete checkpoints beyond the newest `keep`, never the best one, never an incomplete one."""
        complete = complete_checkpoints(self.root)
        for path in complete[: max(0, len(complete) - self.keep)]:
            if path.name != best:
                shutil.rmtree(path, ignore_errors=True)

    def latest(self) -> Path | None:
        complete = complete_checkpoints(self.root)
        return complete[-1] if complete else None


def resolve_resume(resume: str | None, run_dir: Path | None) -> Path | None:
    """The checkpoint folder `--resume` points at: a path, or `auto` (newest complete one in the run folder)."""
    if resume is None:
        return None
    if resume == "auto":
        if run_dir is None:
            raise UserError("--resume auto needs --output-dir: the run folder to continue.")
        return Checkpointer(run_dir).latest()
    path = Path(resume)
    if not path.exists():
        raise UserError(f"--resume {resume}: no such checkpoint folder. Give a folder under <run>/checkpoints/, "
                        "or --resume auto with --output-dir <run>.")
    if (path / "checkpoints").is_dir() and not is_complete(path):  # a run folder: take its newest checkpoint
        latest = Checkpointer(path).latest()
        if latest is None:
            raise UserError(f"--resume {resume}: the run folder holds no complete checkpoint.")
        return latest
    if not is_complete(path):
        raise UserError(f"--resume {resume}: not a complete checkpoint (no {MARKER} marker; the save was "
                        "interrupted). Resume from an earlier checkpoint, or --resume auto.")
    return path
