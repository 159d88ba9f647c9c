"""Stop signals under every launcher: each training process checkpoints at the next step boundary, the whole job
exits 0 with one line giving the resume command, no traceback; the resumed run finishes the same steps."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from accel_train import read_metrics, read_summary
from accel_train.checkpoint import StopRequest
from support import BIN, CONFIGS, SCRIPTS, check, clean_env, free_port, launch, REPO

JOB = str(SCRIPTS / "resume_job.py")
pytestmark = pytest.mark.multiprocess
LAUNCHERS = {  # how the job is started -> (command before the script, processes)
    "accel-train-launch-2": ([sys.executable, "-m", "accel_train", "launch", "--config_file",
                              str(CONFIGS / "cpu_ddp.yaml")], 2),
    "accel-train-launch-1": ([sys.executable, "-m", "accel_train", "launch", "--config_file",
                              str(CONFIGS / "cpu.yaml"), "--num_cpu_threads_per_process", "1"], 1),
    "accelerate-launch-2": ([str(BIN / "accelerate"), "launch", "--config_file", str(CONFIGS / "cpu_ddp.yaml")], 2),
    "accel-train-launch-torchrun-2": ([sys.executable, "-m", "accel_train", "launch", "torchrun",
                                       "--nproc_per_node", "2"], 2),
    "torchrun-2": ([str(BIN / "torchrun"), "--nproc_per_node", "2"], 2),
}


def _stop_mid_run(tmp_path: Path, digits_file: str, launcher: str, to_children: bool, only_rank: int | None = None,
                  extra: tuple[str, ...] = ()) -> Path:
    """SIGTERM at step 6: to the launcher, or to each training process (`to_children`; `only_rank`: to that one)."""
    head, processes = LAUNCHERS[launcher]
    port = ["--main_process_port", str(free_port())] if "--config_file" in head else [f"--master_port={free_port()}"]
    run = tmp_path / "run"
    proc = subprocess.Popen([*head, *port, JOB, "--data", digits_file, "--output-dir", str(run), "--slow", "0.05",
                             *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env(), cwd=REPO)
    deadline = time.time() + 180
    while time.time() < deadline:  # until step 6 of 20 (2 processes) or 40 is logged
        if (run / "metrics.jsonl").exists() and any(r["step"] >= 6 for r in read_metrics(run)):
            break
        time.sleep(0.05)
    if to_children:  # as SLURM sends it to every task: each training process, not the launcher
        workers = [p for p in psutil.Process(proc.pid).children(recursive=True) if JOB in p.cmdline()
                   and not {"launch", "torch.distributed.run"} & set(p.cmdline())]
        assert len(workers) == processes, [w.cmdline() for w in workers]
        if only_rank is not None:
            workers = [w for w in workers if w.environ().get("RANK") == str(only_rank)]
            assert len(workers) == 1
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
    else:
        os.kill(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err[-4000:]
    assert "Traceback" not in err and "Logging error" not in err, err[-4000:]
    summary = read_summary(run)
    steps = summary["steps"]
    assert summary["stopped"] == "SIGTERM" and 6 <= steps < 40 // processes
    stop_lines = [line for line in out.splitlines() if line.startswith("stopped by SIGTERM")]
    assert stop_lines == [f"stopped by SIGTERM after step {steps}: checkpoint {run}/checkpoints/step_{steps:07d}. "
                          f"Resume with --resume auto --output-dir {run}"]
    return run


def _resume(run: Path, digits_file: str, processes: int) -> None:
    args = [JOB, "--data", digits_file, "--output-dir", str(run), "--resume", "auto"]
    check(launch(args, config="cpu_ddp.yaml" if processes == 2 else "cpu.yaml"))
    assert read_summary(run)["steps"] == 40 // processes
    assert [r["step"] for r in read_metrics(run) if r["kind"] == "step"] == list(range(1, 40 // processes + 1))


def test_sigterm_to_accel_train_launch_stops_two_processes_cleanly(tmp_path, digits_file):
    _stop_mid_run(tmp_path, digits_file, "accel-train-launch-2", to_children=False)  # resumed: the slow group


@pytest.mark.parametrize("defer", ["false", pytest.param("true", marks=pytest.mark.slow)],
                         ids=["read at once", "deferred"])
def test_sigterm_to_one_process_is_named_by_both(tmp_path, digits_file, defer):
    """SIGTERM to rank 1 alone (a scheduler signals each machine in turn; rank 0's has not arrived): both processes
    stop at the same step, and rank 0, which writes the summary and the resume line, names SIGTERM too. The stop
    request travels in the step's all-reduce, read at once (the CPU) or a step later (as on a GPU). Rank 0's own
    SIGTERM comes once fit has returned (`--late-signal`): it is taken as answered, and the job still exits 0."""
    run = _stop_mid_run(tmp_path, digits_file, "accelerate-launch-2", to_children=True, only_rank=1,
                        extra=("--defer", defer, "--late-signal", "true"))
    _resume(run, digits_file, 2)


@pytest.mark.slow
@pytest.mark.parametrize(("launcher", "to_children"), [
    ("accel-train-launch-2", False), ("accel-train-launch-1", False), ("accelerate-launch-2", True), ("accel-train-launch-torchrun-2", False),
    ("torchrun-2", True)])
def test_sigterm_under_every_launcher(tmp_path, digits_file, launcher, to_children):
    run = _stop_mid_run(tmp_path, digits_file, launcher, to_children)
    _resume(run, digits_file, LAUNCHERS[launcher][1])


@pytest.mark.slow
def test_sigterm_to_both_machines_stops_them_cleanly_and_resumes(tmp_path, digits_file):
    """Two machines (multi_node.yaml, 1 process each, over loopback), SIGTERM to each machine's launcher as a
    scheduler sends it: both processes checkpoint at the same step, both launchers exit 0 without a traceback,
    machine 0 prints the resume line; the resumed run finishes the 20 steps."""
    run, port = tmp_path / "run", str(free_port())
    cmd = lambda rank: [sys.executable, "-m", "accel_train", "launch", "--config_file",  # noqa: E731
                        str(CONFIGS / "multi_node.yaml"), "--machine_rank", str(rank), "--main_process_ip",
                        "127.0.0.1", "--main_process_port", port, JOB, "--data", digits_file, "--output-dir", str(run),
                        "--slow", "0.05", "--num-threads", "1"]
    machines = [subprocess.Popen(cmd(rank), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 env=clean_env(), cwd=REPO) for rank in (0, 1)]
    deadline = time.time() + 180
    while time.time() < deadline and not (
            (run / "metrics.jsonl").exists() and any(r["step"] >= 6 for r in read_metrics(run))):
        time.sleep(0.05)
    for machine in machines:
        machine.send_signal(signal.SIGTERM)
    results = [machine.communicate(timeout=180) for machine in machines]
    for machine, (out, err) in zip(machines, results):
        assert machine.returncode == 0, err[-4000:]
        assert "Traceback" not in err and "Logging error" not in err, err[-4000:]
    steps = read_summary(run)["steps"]
    assert read_summary(run)["stopped"] == "SIGTERM" and 6 <= steps < 20
    assert [line for line in results[0][0].splitlines() if line.startswith("stopped by SIGTERM")] == [
        f"stopped by SIGTERM after step {steps}: checkpoint {run}/checkpoints/step_{steps:07d}. "
        f"Resume with --resume auto --output-dir {run}"]
    _resume(run, digits_file, 2)


def test_a_late_own_signal_after_another_process_named_the_stop_is_absorbed_once():
    """In one process: a stop named by another process's SIGTERM (the summed flags), then this process's own
    SIGTERM after the run: absorbed, and the handlers from before come back for the next one. A stop on this
    process's own signal puts them back at once."""
    seen: list[int] = []
    before = {sig: signal.signal(sig, lambda signum, frame: seen.append(signum)) for sig in StopRequest.SIGNALS}
    try:
        with StopRequest() as stop:
            assert stop.agree([1.0, 0.0, 0.0])
        assert stop.reason() == "SIGTERM"
        os.kill(os.getpid(), signal.SIGTERM)  # the late one
        os.kill(os.getpid(), signal.SIGTERM)  # asked again: the handler from before
        assert seen == [signal.SIGTERM]
        with StopRequest() as stop:
            os.kill(os.getpid(), signal.SIGINT)
            assert stop.agree(stop.asked())
        assert stop.reason() == "SIGINT"
        os.kill(os.getpid(), signal.SIGINT)
        assert seen == [signal.SIGTERM, signal.SIGINT]
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
