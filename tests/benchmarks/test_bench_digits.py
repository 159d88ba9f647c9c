"""Benchmark (not part of `make test`; run `make bench`): the digits job through accel_train against the same
job as a plain PyTorch loop (tests/benchmarks/plain_digits.py): same model, data, seed, epochs, 1 thread.

Runs are interleaved A B A B ... in one session; prints the median training time (train loops only) and the
median whole-process wall time of each, and their ratios. Target: both ratios <= 1.10.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RUNS = int(os.environ.get("BENCH_RUNS", "5"))
EPOCHS = os.environ.get("BENCH_EPOCHS", "15")
pytestmark = pytest.mark.benchmark


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "OMP_"))}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def _accel(out: Path) -> tuple[float, float]:
    cmd = [sys.executable, "-m", "accel_train", "train", "--config", str(REPO / "examples/configs/digits.yaml"),
           "--num-threads", "1", "--progress", "false", "--epochs", EPOCHS, "--output-dir", str(out)]
    tick = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env=_env())
    wall = time.perf_counter() - tick
    return json.loads((out / "summary.json").read_text())["train_time_s"], wall


def _plain() -> tuple[float, float]:
    cmd = [sys.executable, str(REPO / "tests/benchmarks/plain_digits.py"), "--threads", "1", "--epochs", EPOCHS]
    tick = time.perf_counter()
    proc = subprocess.run(cmd, check=True, capture_output=True, text=True, env=_env())
    wall = time.perf_counter() - tick
    return json.loads(proc.stdout.strip().splitlines()[-1])["train_time_s"], wall


def test_overhead_against_a_plain_pytorch_loop():
    accel, plain = [], []
    with tempfile.TemporaryDirectory() as tmp:
        _plain(), _accel(Path(tmp) / "warm")  # warm the page cache and .pyc files
        for i in range(RUNS):
            plain.append(_plain())
            accel.append(_accel(Path(tmp) / f"run{i}"))
    train_ratio = statistics.median(a[0] / p[0] for a, p in zip(accel, plain))
    wall_ratio = statistics.median(a[1] / p[1] for a, p in zip(accel, plain))
    print(f"\ndigits CNN, {EPOCHS} epochs, 1 thread, {RUNS} interleaved pairs")
    print(f"  training time  accel_train {statistics.median(a[0] for a in accel):6.2f} s   "
          f"plain {statistics.median(p[0] for p in plain):6.2f} s   ratio (median of pairs) {train_ratio:.3f}")
    print(f"  process wall   accel_train {statistics.median(a[1] for a in accel):6.2f} s   "
          f"plain {statistics.median(p[1] for p in plain):6.2f} s   ratio (median of pairs) {wall_ratio:.3f}")
    assert train_ratio <= 1.10 and wall_ratio <= 1.10
