"""Shared test helpers: run `accelerate launch` for real, on loopback, with a free port per run."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "tests" / "scripts"
CONFIGS = REPO / "launch_configs"
BIN = Path(sys.executable).parent

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


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


def check(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\nSTDOUT:\n{proc.stdout[-4000:]}\nSTDERR:\n{proc.stderr[-6000:]}"
    return proc


@pytest.fixture(autouse=True)
def _single_process_env(monkeypatch):
    """In-process tests run as one plain process, whatever the shell that started pytest had set."""
    for key in list(os.environ):
        if key.startswith(("ACCELERATE_", "MASTER_")) or key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
            monkeypatch.delenv(key, raising=False)


@pytest.fixture(scope="session")
def digits_file(tmp_path_factory) -> str:
    """scikit-learn's digits as a torch file, so that test subprocesses skip importing scikit-learn."""
    import torch

    from accel_train.jobs.digits import load_digits_tensors

    path = tmp_path_factory.mktemp("data") / "digits.pt"
    torch.save(load_digits_tensors(), path)
    return str(path)
