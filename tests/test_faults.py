"""Faults are lines and work survives them: one run per folder (two real processes started at once), a full disk
on a real tmpfs, output folders that cannot be made; a failed start leaves nothing that blocks the same command."""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from accel_train import TrainConfig, UserError, fit, read_metrics, read_summary
from accel_train.tasks.vision import DigitsCNN, digits_splits
from support import SCRIPTS, check, clean_env, launch, printed_errors, run_python, REPO
from test_resume import _same_run

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
    if resume:  # a run stopped at step 3, then (a copy of it each round) continued twice at once
        check(run_python([JOB, *common, "--output-dir", str(tmp_path / "stopped"), "--stop-at-step", "3"]))
    for i in range(rounds):
        run = tmp_path / f"run{i}"
        if resume:
            shutil.copytree(tmp_path / "stopped", run)
        go = tmp_path / f"go{i}"
        procs = [_start([*common, "--output-dir", str(run), "--start-when", str(go), *(["--resume", "auto"] * resume)])
                 for _ in range(2)]
        deadline = time.time() + 120
        while len(list(tmp_path.glob(f"go{i}.ready-*"))) < 2 and time.time() < deadline:
            time.sleep(0.01)
        go.touch()  # both are past their imports, about to call fit
        outs = [p.communicate(timeout=240) for p in procs]
        codes = sorted(p.returncode for p in procs)
        assert codes == [0, 2], [o[1][-2000:] for o in outs]
        winner, loser = (0, 1) if procs[0].returncode == 0 else (1, 0)
        assert _error_line(outs[loser][1]) == (
            f"accel_train: error: --output-dir {run} is in use by another run (host {socket.gethostname()} pid "
            f"{procs[winner].pid}): one run per folder. Wait for it to end, stop it, or choose another --output-dir.")
        _whole_run(run, 8)


def test_two_runs_started_at_once_on_one_folder(tmp_path, digits_file):
    race(tmp_path, digits_file, rounds=1, resume=False)


@pytest.mark.slow
@pytest.mark.parametrize("resume", [False, True], ids=["new", "resume-auto"])
def test_two_runs_started_at_once_8_times(tmp_path, digits_file, resume):
    race(tmp_path, digits_file, rounds=8, resume=resume)  # 20 rounds each passed too (10 min): too slow for CI


@pytest.mark.slow
def test_a_holder_killed_by_sigkill_is_taken_over(tmp_path, digits_file):
    """SIGKILL leaves the lock file but the kernel drops the lock: --resume auto takes the folder over (in
    `make test`, test_resume's SIGKILL tests resume over such a stale lock file too)."""
    run = tmp_path / "run"
    killed = run_python([JOB, "--data", digits_file, *FAST, "--output-dir", str(run), "--kill-at-batch", "11"])
    held = (run / ".lock").read_text()
    assert killed.returncode == -9 and re.fullmatch(f"host {socket.gethostname()} pid [0-9]+\n", held), held
    check(run_python([JOB, "--data", digits_file, *FAST, "--output-dir", str(run), "--resume", "auto"]))
    assert read_summary(run)["steps"] == 8 and not (run / ".lock").exists()


@pytest.mark.slow
def test_a_live_holder_refuses_every_rank_of_a_launched_run(tmp_path, digits_file):
    """A live holder (this test process) makes a 2-process run fail on both ranks with one line, not hang."""
    run = tmp_path / "run"
    check(run_python([JOB, "--data", digits_file, *FAST, "--output-dir", str(run)]))
    with open(run / ".lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write(f"host elsewhere pid {os.getpid()}\n")
        held.flush()
        started = time.time()
        proc = launch([JOB, "--data", digits_file, *FAST, "--output-dir", str(run), "--resume", "auto"], timeout=120)
    assert proc.returncode != 0 and time.time() - started < 120
    assert len(printed_errors(proc.stderr)) == 1, proc.stderr[-3000:]
    assert (f"accel_train: error: --output-dir {run} is in use by another run (host elsewhere pid {os.getpid()})"
            in proc.stderr)
    assert "Traceback" not in proc.stderr.split("accel_train: error:")[0]
    assert read_summary(run)["steps"] == 8  # untouched


@pytest.fixture
def small_disk(tmp_path):
    """A real 8 MiB tmpfs (needs root, as CI has)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(disk)], capture_output=True,
                             text=True)
    if mounted.returncode:
        pytest.skip(f"mounting a tmpfs is not allowed here: {mounted.stderr.strip()}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=True)


def _disk_full_then_resume(tmp_path, disk, digits_file, args: list[str], fill_at: int, line: str) -> None:
    """Train on the small disk, fill it at micro-batch `fill_at`: one line `line` (RUN is the run folder), exit 2,
    no partial checkpoint; space freed, --resume auto ends bitwise equal to a run on a roomy disk."""
    common = [JOB, "--data", digits_file, *args]
    full, run = tmp_path / "full", disk / "run"
    check(run_python([*common, "--output-dir", str(full)]))
    proc = run_python([*common, "--output-dir", str(run), "--fill-disk-at-batch", str(fill_at),
                       "--fill-file", str(disk / "filler")])
    assert proc.returncode == 2 and _error_line(proc.stderr) == line.replace("RUN", str(run)), proc.stderr[-3000:]
    assert not [p for p in (run / "checkpoints").iterdir() if not (p / "COMPLETE").is_file()]
    (disk / "filler").unlink()
    check(run_python([*common, "--output-dir", str(run), "--resume", "auto"]))
    _same_run(full, run)


def test_disk_full_during_a_checkpoint_is_one_line_and_resumes_exactly(tmp_path, small_disk, digits_file):
    _disk_full_then_resume(tmp_path, small_disk, digits_file, [*FAST, "--log-every", "4"], fill_at=10, line=(
        "accel_train: error: writing checkpoint step_0000006 failed: No space left on device (0.0 MiB free on the "
        "disk of RUN): the newest complete checkpoint is RUN/checkpoints/step_0000004 (step 4); free some space, "
        "then resume with --resume auto --output-dir RUN."))


@pytest.mark.slow
def test_disk_full_during_a_log_write_is_one_line_and_resumes_exactly(tmp_path, small_disk, digits_file):
    """47 steps an epoch, logged every step and checkpointed at epoch ends: the disk fills at step 50 and a log
    line is the first write that fails (the log file's last page has room for a few more lines)."""
    _disk_full_then_resume(tmp_path, small_disk, digits_file, ["--epochs", "2", "--samples", "1500",
                                                               "--checkpoint-every", "1000"], fill_at=100, line=(
        "accel_train: error: writing metrics.jsonl failed: No space left on device (0.0 MiB free on the disk of "
        "RUN): the newest complete checkpoint is RUN/checkpoints/step_0000047 (step 47); free some space, then "
        "resume with --resume auto --output-dir RUN."))


def _refused_first(tmp_path, output_dir: Path, message: str, **config) -> None:
    train, val = digits_splits(0.2, seed=0)
    with pytest.raises(UserError) as error:
        fit(DigitsCNN(4), train, val, config=TrainConfig(output_dir=str(output_dir), epochs=1, progress=False,
                                                       **config))
    assert str(error.value) == message.replace("OUT", str(output_dir)).replace("TMP", str(tmp_path))


def test_a_start_that_fails_leaves_nothing_behind(tmp_path, small_disk):
    """An output folder that cannot be made, or a mistyped --monitor, is one line before anything is written;
    the same command, corrected, then trains."""
    (tmp_path / "file").write_text("")
    _refused_first(tmp_path, tmp_path / "file" / "run", "--output-dir OUT cannot be created (TMP/file is a file, "
                   "not a folder). Choose an --output-dir in a folder you can write to.")
    _refused_first(tmp_path, tmp_path / "file", "--output-dir OUT is a file, not a folder.")
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    _refused_first(tmp_path, small_disk / "run", "--output-dir OUT cannot be created (Read-only file system). "
                   "Choose an --output-dir in a folder you can write to.")
    subprocess.run(["mount", "-o", "remount,rw", str(small_disk)], check=True)
    out = tmp_path / "monitor"
    _refused_first(tmp_path, out, "--monitor acuracy is not among the validation metrics (accuracy, loss, samples). "
                   "Did you mean `accuracy`? Set --monitor to one of them.", monitor="acuracy")
    assert not out.exists()
    _refused_first(tmp_path, out, "--monitor val_loss is not among the validation metrics (accuracy, loss, samples). "
                   "Did you mean `loss`? Set --monitor to one of them.", monitor="val_loss")
    train, val = digits_splits(0.2, seed=0)
    fit(DigitsCNN(4), train, val, config=TrainConfig(output_dir=str(out), epochs=1, progress=False, monitor="loss"))
    assert read_summary(out)["monitor"] == "loss" and not (out / ".lock").exists()


@pytest.mark.slow
def test_disk_full_under_ddp_is_one_line_and_resumes_exactly(tmp_path, small_disk, digits_file):
    """Two processes under accel-train launch, the disk full in epoch 2: rank 0's line (printed again last by the
    launcher), exit 2 well within the peers' timeout (the launcher stops the other process), no traceback; space
    freed, the resumed run ends bitwise equal to one on a roomy disk."""
    common = [JOB, "--data", digits_file, *FAST, "--log-every", "1"]
    full, run = tmp_path / "full", small_disk / "run"
    check(launch([*common, "--output-dir", str(full)]))
    started = time.time()
    proc = subprocess.run([sys.executable, "-m", "accel_train", "launch", "--config_file",
                           str(REPO / "launch_configs" / "cpu_ddp.yaml"), "--main_process_port", "0", *common,
                           "--output-dir", str(run), "--fill-disk-at-batch", "6", "--fill-file",
                           str(small_disk / "filler")], capture_output=True, text=True, timeout=120, env=clean_env(),
                          cwd=REPO)
    line = (f"accel_train: error: writing the run folder failed: No space left on device (0.0 MiB free on the disk "
            f"of {run}): the newest complete checkpoint is {run}/checkpoints/step_0000002 (step 2); free some space, "
            f"then resume with --resume auto --output-dir {run}.")
    assert proc.returncode == 2 and time.time() - started < 45, proc.stderr[-3000:]
    assert proc.stderr.splitlines()[0] == proc.stderr.splitlines()[-1] == line, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    (small_disk / "filler").unlink()
    check(launch([*common, "--output-dir", str(run), "--resume", "auto"]))
    _same_run(full, run)
