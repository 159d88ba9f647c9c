"""One run per folder: the main process holds an exclusive lock on `<run>/.lock` for the run's whole life.

The lock is `fcntl.flock` on an open file: the kernel releases it when the holder's process ends, however it ends
(SIGKILL included), so a dead holder's lock is simply taken by the next run, with no stale-lock guessing by pid.
The file's text (host and pid) only names the holder when a second run is refused. The holder removes the file as
it lets go; a run that opened the file just before is told by the inode check and locks the new file instead.

A new run that fails before its first complete checkpoint removes what it wrote (the folder was empty when it
started), so the same command can simply be run again.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from pathlib import Path

from .errors import UserError

LOCK = ".lock"


def cannot_create(run_dir: Path, error: OSError) -> UserError:
    """The one line for an output folder that cannot be made or written."""
    if run_dir.exists() and not run_dir.is_dir():
        return UserError(f"--output-dir {run_dir} is a file, not a folder.")
    parent = next((p for p in run_dir.parents if p.exists()), None)
    why = (f"{parent} is a file, not a folder" if parent is not None and not parent.is_dir()
           else error.strerror or type(error).__name__)
    return UserError(f"--output-dir {run_dir} cannot be created ({why}). Choose an --output-dir in a folder you "
                     "can write to.")


class RunLock:
    """The main process's claim on its run folder (see the module docstring). Does nothing until `acquire`; as a
    context manager it lets go when the run ends, as a failure when it ends with an exception."""

    def __init__(self) -> None:
        self.fd: int | None = None
        self.run_dir: Path | None = None
        self.created = False  # this run made the folder
        self.fresh = False  # a new run (not a resumed one) in a folder that was empty

    def acquire(self, run_dir: Path) -> None:
        """Create `run_dir` if needed and lock it; a folder another live run holds is refused with one line."""
        import fcntl  # POSIX only: without it (Windows) runs are not locked

        self.created = not run_dir.exists()
        path = run_dir / LOCK
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            while True:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    holder = _holder(fd)
                    os.close(fd)
                    raise UserError(f"--output-dir {run_dir} is in use by another run ({holder}): one run per "
                                    "folder. Wait for it to end, stop it, or choose another --output-dir.") from None
                if _same_file(fd, path):
                    break
                os.close(fd)  # the holder removed the file as it let go: lock the one there now
            text = f"host {socket.gethostname()} pid {os.getpid()}\n".encode()
            os.pwrite(fd, text, 0)  # then cut a longer old text: a reader never sees an empty file
            os.ftruncate(fd, len(text))
        except OSError as error:
            raise cannot_create(run_dir, error) from None
        self.fd, self.run_dir = fd, run_dir

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, kind, error, trace) -> None:
        self.release(ok=kind is None)

    def release(self, ok: bool = True) -> None:
        """Let go of the folder; after a failed new run without a complete checkpoint, remove what it wrote."""
        if self.fd is None:
            return
        run_dir = self.run_dir
        if not ok and self.fresh and not _has_checkpoint(run_dir):
            for path in run_dir.iterdir():
                if path.name != LOCK:
                    shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        try:
            (run_dir / LOCK).unlink()
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None
        if not ok and self.fresh and self.created:
            try:
                run_dir.rmdir()  # only when empty: a checkpoint, or another run's new lock, keeps it
            except OSError:
                pass


def _holder(fd: int) -> str:
    """The holder's line; a holder that has just locked writes it within moments."""
    for _ in range(50):
        text = os.pread(fd, 200, 0).decode(errors="replace")
        if text.endswith("\n") or "\n" in text:
            return text.splitlines()[0]
        time.sleep(0.02)
    return "a run that is starting"


def _same_file(fd: int, path: Path) -> bool:
    try:
        mine, there = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (mine.st_dev, mine.st_ino) == (there.st_dev, there.st_ino)


def _has_checkpoint(run_dir: Path) -> bool:
    from .checkpoint import Checkpointer

    return Checkpointer(run_dir).latest() is not None
