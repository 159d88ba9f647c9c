"""Two machines for real: two network namespaces on this host joined by a veth pair (10.77.0.1 and 10.77.0.2,
real TCP), each running `accel-train launch` with launch_configs/multi_node.yaml and its own --machine_rank.
They train to one machine's weights; when one machine dies or loses its link, the other ends within a bounded time
with one line naming it and the resume command, and the relaunch ends equal to the uninterrupted run.

Needs root and `ip netns` (CI has both); skipped with the reason elsewhere.
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from accel_train import read_metrics, read_summary
from accel_train.checkpoint import Checkpointer
from support import CONFIGS, REPO, SCRIPTS, check, clean_env, printed_errors, run_python

pytestmark = pytest.mark.multiprocess

JOB = str(SCRIPTS / "machines_job.py")
ADDRESSES = ("10.77.0.1", "10.77.0.2")
PEER_TIMEOUT = 5
BOUND = 30  # seconds from the fault to the survivor's exit: the timeout, a beat, the launchers' exit, a busy CPU
TRAIN = ["--epochs", "2", "--log-every", "1", "--progress", "false", "--num-threads", "1", "--checkpoint-every", "3",
         "--lr", "0.01", "--scheduler", "linear_warmup", "--warmup-steps", "3", "--max-grad-norm", "1.0"]
STEPS = 20  # 300 digits, 32 a step: 10 steps an epoch


class Machines:
    """Two namespaces `<tag>0`, `<tag>1` joined by a veth pair; `start` runs a command on one of them."""

    def __init__(self, tag: str):
        self.names = [f"{tag}{i}" for i in (0, 1)]
        self.devices = [f"{tag}v{i}" for i in (0, 1)]

    def up(self) -> None:
        a, b = self.names
        _ip("netns", "add", a)
        _ip("netns", "add", b)
        _ip("link", "add", self.devices[0], "type", "veth", "peer", "name", self.devices[1])
        for name, device, address in zip(self.names, self.devices, ADDRESSES):
            _ip("link", "set", device, "netns", name)
            _ip("-n", name, "addr", "add", f"{address}/24", "dev", device)
            _ip("-n", name, "link", "set", "lo", "up")
            _ip("-n", name, "link", "set", device, "up")

    def down(self) -> None:
        for name in self.names:
            self.kill(name)
            subprocess.run(["ip", "netns", "del", name], capture_output=True)  # its veth end goes with it

    def pids(self, machine: int | str) -> list[int]:
        name = self.names[machine] if isinstance(machine, int) else machine
        out = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout
        return [int(pid) for pid in out.split()]

    def kill(self, machine: int | str) -> None:
        """What a machine dying looks like: every process in it SIGKILLed at once."""
        for pid in self.pids(machine):
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass

    def cut(self, machine: int, state: str = "down") -> None:
        """Its network goes away (no reset ever reaches the other machine); "up" brings it back."""
        _ip("-n", self.names[machine], "link", "set", self.devices[machine], state)

    def start(self, machine: int, command: list[str]) -> subprocess.Popen:
        env = clean_env(GLOO_SOCKET_IFNAME=self.devices[machine])
        return subprocess.Popen(["ip", "netns", "exec", self.names[machine], *command], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def machines():
    if shutil.which("ip") is None:
        pytest.skip("needs the `ip` command (iproute2) for network namespaces")
    if os.geteuid() != 0:
        pytest.skip("needs root: two machines are simulated as network namespaces")
    pair = Machines(f"at{os.getpid() % 100000}")
    pair.down()  # what an earlier run in a process of this id may have left
    try:
        pair.up()
    except subprocess.CalledProcessError as error:
        pair.down()
        pytest.skip(f"network namespaces unavailable here: {error.stderr.decode().strip()[:200]}")
    try:
        yield pair
    finally:
        pair.down()


def command(machine: int, run: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "accel_train", "launch", "--config_file", str(CONFIGS / "multi_node.yaml"),
            "--machine_rank", str(machine), "--main_process_ip", ADDRESSES[0], JOB, *TRAIN, "--batch-size", "16",
            "--peer-timeout", str(PEER_TIMEOUT), "--output-dir", str(run), *extra]


def finish(procs: list[subprocess.Popen], timeout: float = 240) -> list[tuple[str, str]]:
    results = [proc.communicate(timeout=timeout) for proc in procs]
    for proc, (out, err) in zip(procs, results):
        assert proc.returncode == 0, f"exit {proc.returncode}\n{out[-2000:]}\n{err[-4000:]}"
    return results


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """One process, batch 32: the uninterrupted run every two-machine run must equal."""
    out = tmp_path_factory.mktemp("one") / "run"
    check(run_python([JOB, *TRAIN, "--batch-size", "32", "--output-dir", str(out)]))
    return out


def assert_equal_runs(run: Path, reference: Path) -> None:
    ref, got = load_file(reference / "model.safetensors"), load_file(run / "model.safetensors")
    assert ref.keys() == got.keys()
    for key in ref:
        torch.testing.assert_close(got[key], ref[key], rtol=0, atol=1e-6)
    lr = lambda r: [(row["step"], row["lr"]) for row in read_metrics(r) if row["kind"] == "step"]  # noqa: E731
    assert lr(run) == lr(reference) and len(lr(run)) == STEPS
    assert read_summary(run)["steps"] == STEPS and read_summary(run)["processes"] == 2


def _wait_for_step(run: Path, step: int, procs: list[subprocess.Popen], limit: float = 180) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        assert all(proc.poll() is None for proc in procs), [proc.communicate() for proc in procs]
        if (run / "metrics.jsonl").exists() and any(r.get("step", 0) >= step for r in read_metrics(run)):
            return
        time.sleep(0.1)
    raise AssertionError(f"step {step} never logged")


def _fault_then_resume(machines: Machines, reference: Path, tmp_path: Path, fault, survivors: dict[int, str],
                       heal=lambda: None) -> None:
    """Start both machines, apply `fault` after step 8, check each survivor's exit (within BOUND, one line starting
    with its `survivors` prefix, no traceback), then run the printed resume command on both machines."""
    run = tmp_path / "run"
    procs = [machines.start(m, command(m, run, "--slow", "0.2")) for m in (0, 1)]
    _wait_for_step(run, 8, procs)
    fault()
    faulted = time.monotonic()
    resumes = {}
    for machine, prefix in survivors.items():
        out, err = procs[machine].communicate(timeout=120)
        elapsed = time.monotonic() - faulted
        print(f"machine {machine} exited {elapsed:.1f} s after the fault")
        assert procs[machine].returncode == 2, err[-3000:]
        assert elapsed < BOUND, f"{elapsed:.1f} s"
        assert "Traceback" not in err, err[-4000:]
        lines = printed_errors(err)
        assert len(lines) == 1 and lines[0].startswith(prefix), (lines, prefix)
        latest = Checkpointer(run).latest()
        assert latest is not None and f"The newest complete checkpoint is {latest} (step " in lines[0]
        resume = shlex.split(lines[0].split("--resume auto: ", 1)[1])
        assert resume == [*command(machine, run, "--slow", "0.2"), "--resume", "auto"]
        resumes[machine] = resume
    machines.kill(0)  # whatever is left of the job
    machines.kill(1)
    for proc in procs:
        proc.wait(timeout=30)
    heal()
    newest = Checkpointer(run).latest()
    results = finish([machines.start(m, resumes.get(m, [*command(m, run, "--slow", "0.2"), "--resume", "auto"]))
                      for m in (0, 1)])
    assert f"resume      from {newest}" in results[0][0]
    assert_equal_runs(run, reference)


def test_a_killed_machine_ends_the_other_with_one_line_and_the_run_resumes(machines, reference, tmp_path):
    """Machine 1 SIGKILLed mid-run (all its processes): machine 0 names it and exits; resumed, equal to one run."""
    host = socket.gethostname()
    _fault_then_resume(machines, reference, tmp_path, lambda: machines.kill(1),
                       {0: f"accel_train: error: lost machine 1 ({host}, {ADDRESSES[1]}, process 1): no heartbeat "
                           f"for "})


@pytest.mark.slow
def test_a_machine_whose_link_goes_down_ends_both_with_one_line(machines, reference, tmp_path):
    """Machine 1's link down mid-run (no reset reaches machine 0): each side names the other within the bound."""
    host = socket.gethostname()
    _fault_then_resume(machines, reference, tmp_path, lambda: machines.cut(1), {
        0: f"accel_train: error: lost machine 1 ({host}, {ADDRESSES[1]}, process 1): no heartbeat for ",
        1: f"accel_train: error: lost machine 0 ({host}, {ADDRESSES[0]}, process 0): the rendezvous store it "
           f"serves at {ADDRESSES[0]}:29513 cannot be reached ("}, heal=lambda: machines.cut(1, "up"))


def test_a_slow_evaluation_longer_than_the_timeout_is_not_a_lost_machine(machines, reference, tmp_path):
    """Machine 1 validates for 3 timeouts while machine 0 waits in the collective: no line, and one machine's
    weights at the end."""
    run = tmp_path / "run"
    started = time.monotonic()
    finish([machines.start(m, command(m, run, "--slow-eval", str(3 * PEER_TIMEOUT))) for m in (0, 1)])
    assert time.monotonic() - started > 3 * PEER_TIMEOUT
    assert_equal_runs(run, reference)

