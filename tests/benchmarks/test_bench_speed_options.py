"""Benchmark (not part of `make test`; run `make bench`): each speed option on and off, on the same digits job
(1 thread, interleaved pairs), as training-time ratios on / off. The CPU figures are what this machine shows; the
options are made for GPUs (tensor cores for channels_last, one kernel launch per step for fused optimizers)."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RUNS = int(os.environ.get("BENCH_RUNS", "3"))
EPOCHS = os.environ.get("BENCH_EPOCHS", "5")
OPTIONS = {"channels_last": ["--channels-last", "true"], "fused optimizer": ["--optimizer-impl", "fused"],
           "compile (inductor)": ["--compile", "full"]}  # its training time includes the compile warm-up
pytestmark = pytest.mark.benchmark


def _train(out: Path, extra: list[str]) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "OMP_"))}
    subprocess.run([sys.executable, "-m", "accel_train", "train", "--config", str(REPO / "examples/configs/digits.yaml"),
                    "--num-threads", "1", "--progress", "false", "--epochs", EPOCHS, "--output-dir", str(out), *extra],
                   check=True, capture_output=True, env={**env, "PYTHONPATH": str(REPO)})
    return json.loads((out / "summary.json").read_text())["train_time_s"]


def test_each_speed_option_on_and_off():
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, flags in OPTIONS.items():
            pairs = [(_train(Path(tmp) / f"{name}-on-{i}", flags), _train(Path(tmp) / f"{name}-off-{i}", []))
                     for i in range(RUNS)]
            ratio = statistics.median(on / off for on, off in pairs)
            lines.append(f"  {name:<20} on {statistics.median(p[0] for p in pairs):6.2f} s   off "
                         f"{statistics.median(p[1] for p in pairs):6.2f} s   ratio {ratio:.3f}")
    print(f"\ndigits CNN, {EPOCHS} epochs, 1 thread, {RUNS} interleaved pairs, training time\n" + "\n".join(lines))
