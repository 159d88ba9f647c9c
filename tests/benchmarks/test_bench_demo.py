"""Benchmark (not part of `make test`; run `make bench`): the `make demo` job reaches its accuracy in well under a
minute of training on 2 cores. A wall-time bound on a shared machine is a benchmark, not a unit test."""

from __future__ import annotations

import time

import pytest

from accel_train import read_summary
from accel_train.cli import main
from support import REPO

pytestmark = pytest.mark.benchmark


def test_demo_job_trains_in_under_a_minute(tmp_path):
    started = time.perf_counter()
    assert main(["train", "--config", str(REPO / "examples/configs/digits.yaml"), "--output-dir", str(tmp_path / "d"),
                 "--progress", "false"]) == 0
    wall = time.perf_counter() - started
    summary = read_summary(tmp_path / "d")
    print(f"demo job: {summary['train_time_s']:.1f} s of training, {wall:.1f} s in all")
    assert summary["final_val"]["accuracy"] >= 0.97 and summary["train_time_s"] < 60 and wall < 90
