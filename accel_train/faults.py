"""Write faults become one line, and the work survives them.

A full disk, a quota, an I/O error or a filesystem remounted read-only, met while writing a checkpoint, a log line
or any other file of the run folder, ends the run with one line: what failed, how much space is free, and the
command that resumes. The unfinished checkpoint (`checkpoints/.tmp-*`) is removed, so the newest complete
checkpoint is the one `--resume auto` takes (it never takes an unfinished one anyway: see checkpoint.py).
"""

from __future__ import annotations

import contextlib
import errno
import shutil
from collections.abc import Iterator
from pathlib import Path

from .checkpoint import Checkpointer
from .errors import UserError

WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EFBIG}
# how torch.save (RuntimeError) and safetensors (SafetensorError) report the same errors, and what they mean
WRITE_MESSAGES = {"No space left": "No space left on device", "os error 28": "No space left on device",
                  "Disk quota": "Disk quota exceeded", "Read-only file system": "Read-only file system",
                  "Input/output error": "Input/output error", "file write failed": "a file write failed"}


def is_write_fault(error: BaseException, run_dir: Path) -> bool:
    """Whether `error` (or the error it arose from) is the filesystem refusing a write: an errno or message
    that says so, or a torch/safetensors write error on a disk with less than 1 MiB left (torch's stream writer
    reports a full disk as "basic_ios::clear: iostream error", then "unexpected pos")."""
    seen = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in WRITE_ERRNOS:
            return True
        if _library_error(seen) and any(mark in str(seen) for mark in WRITE_MESSAGES):
            return True
        seen = seen.__cause__ or seen.__context__
    return _library_error(error) and _free_bytes(run_dir) < 2**20


def _library_error(error: BaseException) -> bool:
    return isinstance(error, (OSError, RuntimeError)) or type(error).__name__ == "SafetensorError"


def _free_bytes(path: Path) -> float:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return float("inf")


def _reason(error: BaseException, run_dir: Path) -> str:
    seen = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.strerror:
            return seen.strerror
        text = str(seen)
        for mark, meaning in WRITE_MESSAGES.items():
            if mark in text:
                return meaning
        seen = seen.__cause__ or seen.__context__
    return "No space left on device" if _free_bytes(run_dir) < 2**20 else type(error).__name__


def _free(path: Path) -> str:
    free = _free_bytes(path)
    return f"{free / 2**20:.1f} MiB free" if free != float("inf") else "free space unknown"


def fault_line(run_dir: Path, what: str, error: BaseException) -> UserError:
    """Remove the unfinished checkpoint and say what failed, the space left and how to continue."""
    root = Path(run_dir) / "checkpoints"
    if root.is_dir():
        for partial in root.glob(".tmp-*"):
            shutil.rmtree(partial, ignore_errors=True)
    latest = Checkpointer(run_dir).latest_named()
    kept = (f"the newest complete checkpoint is {latest}; free some space, "
            f"then resume with --resume auto --output-dir {run_dir}" if latest is not None else
            "no checkpoint was complete yet; free some space, then run the same command again")
    return UserError(f"{what} failed: {_reason(error, run_dir)} ({_free(run_dir)} on the disk of {run_dir}): {kept}.")


@contextlib.contextmanager
def write_faults(run_dir: Path, what: str) -> Iterator[None]:
    """Inside, a write fault becomes the one line of `fault_line`; every other error passes unchanged."""
    try:
        yield
    except UserError:
        raise
    except Exception as error:
        if not is_write_fault(error, run_dir):
            raise
        raise fault_line(run_dir, what, error) from None


class FaultCheckpointer(Checkpointer):
    """`Checkpointer` whose failed writes name the checkpoint, also when a background write fails later."""

    pending: str | None = None  # the checkpoint whose write may still be in flight

    def wait(self) -> None:
        with write_faults(self.root.parent, f"writing checkpoint {self.pending}"):
            super().wait()

    def save(self, accelerator, progress, name: str, model, meter) -> Path:
        self.wait()  # the previous write's error, under its own name
        self.pending = name
        with write_faults(self.root.parent, f"writing checkpoint {name}"):
            return super().save(accelerator, progress, name, model, meter)
