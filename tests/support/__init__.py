"""Shared test helpers: run `accelerate launch` and the examples for real, on loopback, with a free port per run.

Imported as `support` (pytest's `pythonpath` puts tests/ and tests/scripts/ on the path: see pyproject.toml)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "tests" / "scripts"
CONFIGS = REPO / "launch_configs"
BIN = Path(sys.executable).parent

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ACCELERATE_", "OMP_", "MASTER_", "WORLD_SIZE", "RANK", "LOCAL_", "PYTEST_"))}
    env.update(PYTHONUNBUFFERED="1", GLOO_SOCKET_IFNAME="lo", PYTHONPATH=str(REPO))
    env.update(extra)
    return env


def launch(args: list[str], config: str = "cpu_ddp.yaml", launch_args: tuple[str, ...] = (), timeout: int = 300,
           env: dict[str, str] | None = None, cwd: Path | None = None, port: int | None = None) -> subprocess.CompletedProcess:
    """`accelerate launch --config_file launch_configs/<config> [launch_args] <args>`; returns the finished process."""
    cmd = [str(BIN / "accelerate"), "launch", "--config_file", str(CONFIGS / config),
           "--main_process_port", str(port or free_port()), *launch_args, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env or clean_env(),
                          cwd=cwd or REPO)


def run_python(args: list[str], timeout: int = 300, env: dict[str, str] | None = None,
               cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout,
                          env=env or clean_env(), cwd=cwd or REPO)


def printed_errors(stderr: str) -> list[str]:
    """The `accel_train: error:` lines the processes printed. accelerate 1.16's one-process launcher also quotes the
    tail of the process's stderr in its own traceback (`RuntimeError: accel_train: error: ...`): that echo is the
    launcher's, not a second message, so only lines that start with the prefix count."""
    return [line for line in stderr.splitlines() if line.startswith("accel_train: error:")]


def check(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\nSTDOUT:\n{proc.stdout[-4000:]}\nSTDERR:\n{proc.stderr[-6000:]}"
    return proc




def run_example(name: str, argv: list[str]):
    """examples/<name>'s `main(argv)` in this process; what it returns (the run summary)."""
    import runpy

    return runpy.run_path(str(REPO / "examples" / name), run_name="example")["main"](argv)


@contextlib.contextmanager
def busy_core():
    """Another process keeping one core busy (pinned to it), as a neighbour's job would; yields that core."""
    import time

    core = sorted(os.sched_getaffinity(0))[0]
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"],
                            preexec_fn=lambda: os.sched_setaffinity(0, {core}))
    try:
        time.sleep(0.5)  # let it take the core
        yield core
    finally:
        busy.kill()
        busy.wait()
