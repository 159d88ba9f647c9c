"""A machine that dies or drops off the network ends the run on every other machine with one line, never a hang.

With several processes, each one starts a heartbeat thread. It connects its own client to the rendezvous store
(the TCPStore every launcher already serves at MASTER_ADDR:MASTER_PORT: torchrun's agent on machine 0, or rank 0
under other `env://` launches), writes a beat counter there every `peer_timeout / 5` seconds and reads every
peer's. A peer whose counter has not moved for `peer_timeout` seconds (measured on this machine's clock, so the
machines' clocks need not agree), or a store that cannot be reached within `peer_timeout`, means that machine is
gone: the thread prints one line naming it (its rank, machine and address) with the newest complete checkpoint and
the command that resumes, and ends the process at once with `os._exit`, because the main thread may be blocked
inside a C++ collective that nothing else would interrupt.

Why a heartbeat and not only the process-group timeout: the timeout also fires when peers wait in a collective
while one rank runs a long evaluation or checkpoint, so it must be long (torch's default: 30 minutes), and gloo's
timeout error does not say which peer is gone. The beat comes from a thread, so it keeps going while the main
thread evaluates, saves or waits in a collective (the thread needs Python's GIL for a moment every beat, which
torch's kernels, file writes and sleeps release). A collective that fails at once (the peer's connection reset
when its machine was killed) is held until the heartbeat has decided, so it ends with the same line instead of
gloo's traceback. Nothing runs per training step. A process that finishes writes `done` instead of a count, so
peers still writing the final model do not mistake it for a lost one. torch's process-group timeout is left as it
is, a backstop behind the heartbeat. Under `accel-train launch` the line goes to the launcher, which prints it
last, after leaving out the launcher's own traceback.

Measured with two network namespaces on a 2-core shared CPU, `--peer-timeout 5` (tests/test_machines.py): the
survivor exits 6.6-8.1 s after the other machine is SIGKILLed, and both exit 7.3-10.5 s after a link goes down.
"""

from __future__ import annotations

import os
import shlex
import socket
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

from .errors import ERROR_FILE, EXIT_USER_ERROR

BEATS_PER_TIMEOUT = 5
LAUNCHERS = ("accelerate", "accelerate.commands.launch", "torchrun", "torch.distributed.run")
_generation = [0]  # fit() calls in this process: each one's keys are its own


class Peers:
    """The heartbeat of this process (inactive with one process); a context manager around the run."""

    def __init__(self, accelerator=None, timeout: float = 0.0, run_dir: str | None = None):
        self.active = accelerator is not None and accelerator.num_processes > 1 and timeout > 0 \
            and "MASTER_ADDR" in os.environ and "MASTER_PORT" in os.environ
        self.accelerator, self.timeout, self.run_dir = accelerator, timeout, run_dir
        self.stopped = threading.Event()
        self.hosts: dict[int, str] = {}  # rank -> "machine M (address)", read once at start
        if not self.active:
            return
        _generation[0] += 1
        self.rank, self.world = accelerator.process_index, accelerator.num_processes
        self.master = (os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]))
        self.prefix = f"accel_train/peers/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/{_generation[0]}/"
        self.reached = time.monotonic()  # when a round with the store last completed
        self.seen: dict[int, tuple[bytes, float]] = {}  # peer -> (its last beat read, when it last changed)
        self.failure: BaseException | None = None  # the store's own error, once it fails
        for target in (self._beat, self._watch):
            threading.Thread(target=target, name=f"accel_train-{target.__name__[1:]}", daemon=True).start()

    def __enter__(self) -> Peers:
        return self

    def __exit__(self, kind, error, trace) -> None:
        if error is not None:
            self.explain(error)
        self.close()

    def close(self) -> None:
        self.stopped.set()

    def explain(self, error: BaseException) -> None:
        """After a failed collective: wait (about 1.6 timeouts at most) for the heartbeat to name a lost peer, which
        ends the process with its line; if none is lost, return, and the error goes on as it was."""
        if self.active and _is_distributed(error):
            self.stopped.wait(self.timeout * (1 + 3 / BEATS_PER_TIMEOUT) + 1)

    def _beat(self) -> None:
        """Every beat: write this process's count, read the peers' (the only thread that talks to the store, and
        the one that may block in it: `_watch` decides)."""
        from torch.distributed import PrefixStore, TCPStore

        try:
            store = PrefixStore(self.prefix, TCPStore(*self.master, is_master=False, wait_for_workers=False,
                                                      timeout=timedelta(seconds=self.timeout)))
            store.set(f"host/{self.rank}", _describe_self(self.master[0]))
            store.set(f"beat/{self.rank}", "0")
            store.wait([f"beat/{r}" for r in range(self.world)])
            self.hosts = {r: store.get(f"host/{r}").decode() for r in range(self.world)}
            peers = [r for r in range(self.world) if r != self.rank]
            self.seen, self.reached = {r: (b"0", time.monotonic()) for r in peers}, time.monotonic()
            beats = 0
            while not self.stopped.wait(self.timeout / BEATS_PER_TIMEOUT):
                beats += 1
                store.set(f"beat/{self.rank}", str(beats))
                values = store.multi_get([f"beat/{r}" for r in peers])
                self.reached = now = time.monotonic()
                for peer, value in zip(peers, values):
                    if value != self.seen[peer][0]:
                        self.seen[peer] = (value, now)
            store.set(f"beat/{self.rank}", "done")
        except Exception as error:  # noqa: BLE001 - every failure here means the store is out of reach
            if not self.stopped.is_set():
                self.failure = error

    def _watch(self) -> None:
        """Every beat, without touching the network: a peer silent too long, or a store that failed or has not
        answered for a timeout, ends the process with its line."""
        while not self.stopped.wait(self.timeout / BEATS_PER_TIMEOUT):
            now = time.monotonic()
            if self.failure is not None or now - self.reached > self.timeout:
                _leave(self._line(self._store_lost(now)))
            for peer, (value, changed) in list(self.seen.items()):
                if value != b"done" and now - changed > self.timeout:
                    _leave(self._line(f"lost {self.hosts.get(peer, f'process {peer}')}: no heartbeat for "
                                      f"{now - changed:.0f} s (--peer-timeout {self.timeout:g})"))

    def _store_lost(self, now: float) -> str:
        host, port = self.master
        error = self.failure
        reason = (f"no answer for {now - self.reached:.0f} s" if error is None else
                  str(error).strip().splitlines()[0][:160] if str(error).strip() else type(error).__name__)
        holder = self.hosts.get(0, f"machine 0 ({host})")
        return f"lost {holder}: the rendezvous store it serves at {host}:{port} cannot be reached ({reason})"

    def _line(self, what: str) -> str:
        from .checkpoint import Checkpointer

        project = self.accelerator.project_configuration.project_dir or self.run_dir  # set once the run starts
        run_dir = Path(project) if project else None
        latest = Checkpointer(run_dir).latest_named() if run_dir is not None else None
        command = shlex.join(resume_command(run_dir))
        if latest is None:
            return (f"{what}. No checkpoint was complete yet: run the same command again on every machine: "
                    f"{command}")
        return (f"{what}. The newest complete checkpoint is {latest}; "
                f"resume on every machine with the same command and --resume auto: {command}")


def _leave(line: str) -> None:
    """Print the line (once per machine: its first process; under `accel-train launch`, which prints it last, into
    its file) and end this process now."""
    if os.environ.get("LOCAL_RANK", "0") == "0":
        if os.environ.get(ERROR_FILE):
            with open(os.environ[ERROR_FILE], "a") as handle:
                handle.write(f"accel_train: error: {line}\n")
        else:
            print(f"accel_train: error: {line}", file=sys.stderr, flush=True)
    else:
        time.sleep(1.0)  # the first process prints; its launcher stops this one soon after
    os._exit(EXIT_USER_ERROR)


def _is_distributed(error: BaseException) -> bool:
    """A collective or store failure (gloo and NCCL report a lost peer as DistError or a RuntimeError)."""
    import torch.distributed as dist

    while error is not None:
        if isinstance(error, dist.DistError) or (isinstance(error, RuntimeError) and any(
                word in str(error) for word in ("Gloo", "gloo", "NCCL", "Connection", "connection", "peer"))):
            return True
        error = error.__cause__ or error.__context__
    return False


def _describe_self(master: str) -> str:
    """'machine M (address)' for this process: the address it reaches machine 0 from, and the host's name."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect((master, 9))  # picks the route; sends nothing
            address = probe.getsockname()[0]
    except OSError:
        address = "address unknown"
    where = f"{socket.gethostname()}, {address}"
    machine = os.environ.get("GROUP_RANK")
    rank = os.environ.get("RANK", "?")
    return f"machine {machine} ({where}, process {rank})" if machine is not None else f"process {rank} ({where})"


def resume_command(run_dir: Path | None) -> list[str]:
    """The command this machine was started with (its outermost launcher's, else this process's), with
    `--resume auto` (and `--output-dir` when it had none)."""
    command = [sys.executable, *sys.argv]
    try:
        import psutil

        for process in [psutil.Process(), *psutil.Process().parents()]:
            cmd = process.cmdline()
            if _is_launcher(cmd):
                command = cmd
    except Exception:  # noqa: BLE001 - a parent we may not read: this process's own command
        pass
    if len(command) > 1 and Path(command[0]).name.startswith("python") and command[1] != "-m":
        command = command[1:]  # `python /venv/bin/accel-train ...`: as the user typed it
    kept: list[str] = []
    skip = False
    for part in command:
        if skip:
            skip = False
        elif part == "--resume":
            skip = True
        elif not part.startswith("--resume="):
            kept.append(part)
    named = any(part.split("=")[0] in ("--output-dir", "--output_dir") for part in kept)
    return [*kept, "--resume", "auto", *([] if named or run_dir is None else ["--output-dir", str(run_dir)])]


def _is_launcher(cmd: list[str]) -> bool:
    head = [Path(part).name for part in cmd[:3]]
    if any(name in LAUNCHERS for name in head):
        return True
    return any(name in ("accel-train", "accel_train") for name in head) and "launch" in cmd[1:4]
