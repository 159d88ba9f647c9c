"""Faults are lines and work survives them: one run per folder (two real processes started at once), a full disk
on a real tmpfs, output folders that cannot be made; a failed start leaves nothing that blocks the same command."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from accel_train import read_metrics, read_summary
from support import SCRIPTS, check, clean_env, launch, run_python, REPO

JOB = str(SCRIPTS / "resume_job.py")
pytestmark = pytest.mark.multiprocess
FAST = ["--epochs", "2", "--samples", "128", "--checkpoint-every", "2"]  # 2 x 4 optimizer steps


def _start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, JOB, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=clean_env(), cwd=REPO)


def _error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines and "Traceback" not in stderr, stderr[-3000:]
    return lines[-1]


def _whole_run(run: Path, steps: int) -> None:
    """The run folder of one writer: every logged step once, in order; every checkpoint complete and loadable."""
    rows = read_metrics(run)  # every line parses: no interleaved or torn lines
    assert [r["step"] for r in rows if r["kind"] == "step"] == list(range(1, steps + 1))
    assert read_summary(run)["steps"] == steps and not (run / ".lock").exists()
    kept = sorted((run / "checkpoints").iterdir())
    assert kept and all((p / "COMPLETE").is_file() for p in kept), kept  # no temporary folder left
    for path in kept:
        assert json.loads((path / "progress.json").read_text())["step"] == int(path.name[5:])
        assert load_file(path / "model.safetensors")


def race(tmp_path: Path, digits_file: str, rounds: int, resume: bool) -> None:
    """`rounds` times: two processes on one folder, started at the same instant; exactly one trains."""
    common = ["--data", digits_file, *FAST, "--slow", "0.01"]
    for i in range(rounds):
        run = tmp_path / f"run{i}"
        if resume:  # a run stopped at step 3, then continued twice at once
            check(run_python([JOB, *common, "--output-dir", str(run), "--stop-at-step", "3"]))
        at = str(time.time() + 4)  # both past their imports by then
        procs = [_start([*common, "--output-dir", str(run), "--start-at", at, *(["--resume", "auto"] * resume)])
                 for _ in range(2)]
        outs = [p.communicate(timeout=240) for p in procs]
        codes = sorted(p.returncode for p in procs)
        assert codes == [0, 2], [o[1][-2000:] for o in outs]
        winner, loser = (0, 1) if procs[0].returncode == 0 else (1, 0)
        assert _error_line(outs[loser][1]) == (
            f"accel_train: error: --output-dir {run} is in use by another run (host {socket.gethostname()} pid "
            f"{procs[winner].pid}): one run per folder. Wait for it to end, stop it, or choose another --output-dir.")
        _whole_run(run, 8)


def test_two_runs_started_at_once_on_one_folder(tmp_path, digits_file):
    race(tmp_path / "new", digits_file, rounds=2, resume=False)
    race(tmp_path / "auto", digits_file, rounds=1, resume=True)


@pytest.mark.slow
@pytest.mark.parametrize("resume", [False, True], ids=["new", "resume-auto"])
def test_two_runs_started_at_once_20_times(tmp_path, digits_file, resume):
    race(tmp_path, digits_file, rounds=20, resume=resume)


def test_a_dead_holder_is_taken_over_and_a_live_one_refuses_every_rank(tmp_path, digits_file):
    """SIGKILL leaves the lock file (the kernel drops the lock): --resume auto takes it over. A live holder (this
    test process) makes a 2-process run fail on both ranks with one line, without hanging."""
    run = tmp_path / "run"
    killed = run_python([JOB, "--data", digits_file, *FAST, "--output-dir", str(run), "--kill-at-batch", "11"])
    assert killed.returncode == -9 and (run / ".lock").read_text().startswith(f"host {socket.gethostname()} pid ")
    check(run_python([JOB, "--data", digits_file, *FAST, "--output-dir", str(run), "--resume", "auto"]))
    assert read_summary(run)["steps"] == 8 and not (run / ".lock").exists()

    with open(run / ".lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write(f"host elsewhere pid {os.getpid()}\n")
        held.flush()
        started = time.time()
        proc = launch([JOB, "--data", digits_file, *FAST, "--output-dir", str(run), "--resume", "auto"], timeout=120)
    assert proc.returncode != 0 and time.time() - started < 120
    assert proc.stderr.count("accel_train: error:") == 1, proc.stderr[-3000:]
    assert (f"accel_train: error: --output-dir {run} is in use by another run (host elsewhere pid {os.getpid()})"
            in proc.stderr)
    assert "Traceback" not in proc.stderr.split("accel_train: error:")[0]
    assert read_summary(run)["steps"] == 8  # untouched
