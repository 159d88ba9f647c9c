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

from .checkpoint import Checkpointer, read_progress
from .errors import UserError

WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EFBIG}
# how torch.save (RuntimeError) and safetensors (SafetensorError) report the same errors, and what they mean
WRITE_MESSAGES = {"No space left": "No space left on device", "os error 28": "No space left on device",
                  "Disk quota": "Disk quota exceeded", "Read-only file system": "Read-only file system",
                  "Input/output error": "Input/output error", "file write failed": "a file write failed"}


def is_write_fault(error: BaseException) -> bool:
    """Whether `error` is the filesystem refusing a write (not a bug, not a user's mistake)."""
    if isinstance(error, OSError) and error.errno in WRITE_ERRNOS:
        return True
    library = isinstance(error, (OSError, RuntimeError)) or type(error).__name__ == "SafetensorError"
    return library and any(mark in str(error) for mark in WRITE_MESSAGES)


def _reason(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    text = str(error)
    return next((meaning for mark, meaning in WRITE_MESSAGES.items() if mark in text), type(error).__name__)


def _free(path: Path) -> str:
    try:
        return f"{shutil.disk_usage(path).free / 2**20:.1f} MiB free"
    except OSError:
        return "free space unknown"


def fault_line(run_dir: Path, what: str, error: BaseException) -> UserError:
    """Remove the unfinished checkpoint and say what failed, the space left and how to continue."""
    root = Path(run_dir) / "checkpoints"
    if root.is_dir():
        for partial in root.glob(".tmp-*"):
            shutil.rmtree(partial, ignore_errors=True)
    latest = Checkpointer(run_dir).latest()
    kept = (f"the newest complete checkpoint is {latest} (step {read_progress(latest).step}); free some space, "
            f"then resume with --resume auto --output-dir {run_dir}" if latest is not None else
            "no checkpoint was complete yet; free some space, then run the same command again")
    return UserError(f"{what} failed: {_reason(error)} ({_free(run_dir)} on the disk of {run_dir}): {kept}.")


@contextlib.contextmanager
def write_faults(run_dir: Path, what: str) -> Iterator[None]:
    """Inside, a write fault becomes the one line of `fault_line`; every other error passes unchanged."""
    try:
        yield
    except UserError:
        raise
    except Exception as error:
        if not is_write_fault(error):
            raise
        raise fault_line(run_dir, what, error) from None


class FaultCheckpointer(Checkpointer):
    """`Checkpointer` whose failed writes name the checkpoint."""

    def save(self, accelerator, progress, name: str, model, meter) -> Path:
        with write_faults(self.root.parent, f"writing checkpoint {name}"):
            return super().save(accelerator, progress, name, model, meter)
