"""`accel-train launch ARGS`: `accelerate launch ARGS` under a parent that turns a stop signal into a clean stop
(`accel-train launch torchrun ARGS`: the same for `torchrun ARGS`).

Schedulers stop a job by signalling the process they started (Kubernetes: SIGTERM, then SIGKILL after a grace
period; SLURM `--signal`). Sent to `accelerate launch` itself, the signal goes wrong: torch's elastic agent (several
processes) forwards it to the training processes, which checkpoint and exit 0, but then exits 1 with a
`SignalException` traceback whatever they did; the one-process launcher dies at once and leaves its training process
running, unsignalled (before accelerate 1.16), or forwards it, kills the process if it is alive 5 s later and exits
143 even after a clean checkpoint (1.16, measured). This parent starts `accelerate launch` in a session of its own,
and on SIGTERM, SIGINT or SIGHUP sends SIGTERM to the training processes only (the launcher's children, not their
DataLoader workers): each checkpoints at the next step boundary and exits 0 (see checkpoint.StopRequest), so the
launcher exits 0 and so does this process. A second signal goes to the launcher itself (its own forced shutdown). If
this parent is killed outright, the launcher gets SIGTERM from the kernel (Linux: PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _die_with_parent() -> None:
    """In the launcher, before exec: SIGTERM when this parent dies (Linux; elsewhere nothing)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def main(argv: list[str]) -> int:
    """Run `accelerate launch argv` and return its exit status (0 after a clean stop on a signal)."""
    import psutil

    command = (["accel_train.launcher", "torch.distributed.run", *argv[1:]] if argv[:1] == ["torchrun"]
               else ["accel_train.launcher", "accelerate.commands.launch", *argv])
    import os
    import tempfile

    from .errors import ERROR_FILE

    errors = Path(tempfile.mkdtemp(prefix="accel-train-launch-")) / "error"
    env = {**os.environ, ERROR_FILE: str(errors)}
    launcher = subprocess.Popen([sys.executable, "-m", *command], start_new_session=True, preexec_fn=_die_with_parent,
                                env=env)
    asked: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: asked.append(signum)) for sig in STOP_SIGNALS}
    stopped: set[int] = set()
    forced = False
    try:
        while launcher.poll() is None:
            if asked and not forced:
                try:  # workers started after the signal are asked too
                    workers = psutil.Process(launcher.pid).children()
                except psutil.NoSuchProcess:
                    workers = []
                for worker in workers:
                    if worker.pid not in stopped:
                        stopped.add(worker.pid)
                        try:
                            worker.send_signal(signal.SIGTERM)
                        except psutil.NoSuchProcess:
                            pass
                if len(asked) > 1:  # asked again: let the launcher stop them its own way
                    launcher.send_signal(signal.SIGTERM)
                    forced = True
            time.sleep(0.1)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return _last_word(launcher.returncode, errors)


def _run_launcher(module: str, argv: list[str]) -> None:
    """In the launcher's process: run `module` (accelerate's launcher or torchrun) as its own command would. When
    it fails after a training process recorded our one line, it exits 1 without its traceback (the line says what
    happened; `main` prints it last)."""
    import os
    import runpy

    from .errors import ERROR_FILE

    sys.argv = [module, *argv]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except Exception:
        recorded = os.environ.get(ERROR_FILE, "")
        if recorded and os.path.isfile(recorded) and os.path.getsize(recorded):
            sys.exit(1)
        raise


def _last_word(code: int, errors: Path) -> int:
    """After a failed launch, our one line again, last (below torch's log lines; `_run_launcher` leaves out the
    launcher's own traceback once the line is recorded): exit status 2, as without a launcher."""
    line = errors.read_text().splitlines()[0] if errors.is_file() else None
    shutil.rmtree(errors.parent, ignore_errors=True)
    if code != 0 and line:
        print(line, file=sys.stderr, flush=True)
        return 2
    return code


if __name__ == "__main__":
    _run_launcher(sys.argv[1], sys.argv[2:])
