"""Never lose work: exact resume after SIGKILL in a fresh process, SIGTERM, atomic checkpoints, bad resumes."""

from __future__ import annotations

import json
import os
import signal
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


def _run(args: list[str], ddp: bool = False) -> subprocess.CompletedProcess:
    return launch([JOB, *args]) if ddp else run_python([JOB, *args])


CONFIGS = {  # (processes > 1, DataLoader workers, precision, more flags); every value is covered by a SIGKILL test
    "single-fp32": (False, 0, "no", []), "single-workers-bf16": (False, 2, "bf16", []),
    "ddp-bf16": (True, 0, "bf16", []),
    # foreach AdamW: the non-finite verdict is read at each step (the default, fused, defers it a step)
    "ddp-foreach": (True, 0, "no", ["--optimizer-impl", "foreach", "--log-every", "4"])}
KILLS = {  # micro-batch at which rank 0 is killed -> (step, epoch, batch in epoch) of the checkpoint resumed
    "single-fp32": [(12, (3, 0, 6)), (18, (9, 1, 2)), (31, (16, 2, 0))],  # in a window, mid-epoch, epoch end
    "single-workers-bf16": [(18, (9, 1, 2))],
    "ddp-bf16": [(14, (6, 1, 4))],  # 2 x 8 batches per epoch: killed inside the window after step 6
    "ddp-foreach": [(14, (6, 1, 4))],
}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, digits_file):
    """The reference runs, one per config, trained without interruption."""
    made = {}

    def get(name: str) -> Path:
        if name not in made:
            ddp, workers, precision, extra = CONFIGS[name]
            out = tmp_path_factory.mktemp(name) / "full"
            check(_run(["--data", digits_file, "--num-workers", str(workers), "--mixed-precision", precision,
                        *extra, "--output-dir", str(out)], ddp))
            made[name] = out
        return made[name]
    return get


def _same_run(a: Path, b: Path) -> None:
    """Final weights, optimizer state and every logged line (per-step losses included) are bitwise equal."""
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key
    last = f"step_{read_summary(a)['steps']:07d}"
    oa = torch.load(a / "checkpoints" / last / "optimizer.bin", weights_only=True)
    ob = torch.load(b / "checkpoints" / last / "optimizer.bin", weights_only=True)
    for key, state in oa["state"].items():
        for name, value in state.items():
            assert torch.equal(value, ob["state"][key][name]), (key, name)
    rows_a, rows_b = _computed(read_metrics(a)), _computed(read_metrics(b))
    assert [r["step"] for r in rows_b] == [r["step"] for r in rows_a], "tracker steps continue, no gaps or repeats"
    assert rows_a == rows_b


def _computed(rows: list[dict]) -> list[dict]:
    """The logged values the run computes, without the measured ones (times, speeds, memory)."""
    return [{k: v for k, v in row.items() if not k.startswith(("perf/", "sys/", "time/", "gpu/"))} for row in rows]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_sigkill_then_resume_equals_uninterrupted(tmp_path, uninterrupted, digits_file, name):
    """5 epochs of 15 shuffled batches, accumulation 2 (8 optimizer steps per epoch, the last a short window),
    a checkpoint every 3 steps. The run is SIGKILLed (inside a window, after a mid-epoch checkpoint, after an
    epoch-end checkpoint), each time resumed in a new process with --resume auto, and must end bitwise equal
    to the uninterrupted run."""
    ddp, workers, precision, extra = CONFIGS[name]
    common = ["--data", digits_file, "--num-workers", str(workers), "--mixed-precision", precision, *extra]
    full, broken = uninterrupted(name), tmp_path / "broken"
    assert read_summary(full)["steps"] == (20 if ddp else 40)
    for i, (batch, point) in enumerate(KILLS[name]):
        proc = _run([*common, "--output-dir", str(broken), "--kill-at-batch", str(batch)]
                    + (["--resume", "auto"] if i else []), ddp)
        assert proc.returncode != 0, "the process was killed"
        latest = max((p for p in (broken / "checkpoints").iterdir() if (p / "COMPLETE").exists()),
                     key=lambda p: int(p.name[5:]))
        progress = json.loads((latest / "progress.json").read_text())
        assert (progress["step"], progress["epoch"], progress["batch_in_epoch"]) == point
    check(_run([*common, "--output-dir", str(broken), "--resume", "auto"], ddp))
    _same_run(full, broken)


def test_sigterm_checkpoints_exits_0_and_resumes_exactly(tmp_path, uninterrupted, digits_file):
    full, stopped = uninterrupted("single-fp32"), tmp_path / "stopped"
    proc = subprocess.Popen([sys.executable, JOB, "--data", digits_file, "--output-dir", str(stopped),
                             "--slow", "0.05"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env(), cwd=REPO)
    deadline = time.time() + 120
    while time.time() < deadline:  # wait until training is mid-epoch 2
        rows = read_metrics(stopped) if (stopped / "metrics.jsonl").exists() else []
        if any(r["kind"] == "step" and r["step"] >= 10 for r in rows):
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    assert "stopped by SIGTERM" in out and "--resume auto" in out
    summary = read_summary(stopped)
    assert summary["stopped"] == "SIGTERM" and 10 <= summary["steps"] < 40
    progress = json.loads((stopped / "checkpoints" / f"step_{summary['steps']:07d}" / "progress.json").read_text())
    assert progress["step"] == summary["steps"]
    check(run_python([JOB, "--data", digits_file, "--output-dir", str(stopped), "--resume", "auto"]))
    _same_run(full, stopped)
