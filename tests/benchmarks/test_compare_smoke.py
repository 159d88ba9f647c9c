"""The benchmark command trains every job with every tool (a few steps each), and the step-overhead twin gives
bitwise accel_train's losses: the benchmarks stay runnable. Timings at this size are noise: none is asserted."""

from __future__ import annotations

import json
import math

from support import REPO, check, run_python

JOBS, TOOLS = ("digits", "small_steps", "minilm", "clip"), ("accel_train", "plain", "accelerate", "hf_trainer", "lightning")
SAMPLES = {"digits": 2 * 32, "small_steps": 2 * 8, "minilm": 2 * 16, "clip": 2 * 64}  # 2 steps of the job's batch


def test_every_tool_trains_every_job(tmp_path):
    # one process for all 20 runs (--in-process): 20 interpreter start-ups would cost about a minute
    check(run_python([str(REPO / "tests/benchmarks/compare.py"), "--smoke", "--in-process", "--runs", "1",
                      "--out", str(tmp_path)], timeout=600))
    results = json.loads((tmp_path / "results.json").read_text())
    rows = {(row["job"], row["tool"]): row for row in results["rows"]}
    assert sorted(rows) == sorted((job, tool) for job in JOBS for tool in TOOLS)
    for (job, tool), row in rows.items():
        assert row["steps"] == 2 and row["samples"] == SAMPLES[job], (job, tool, row)
        assert math.isfinite(row["final_loss"]) and row["final_loss"] > 0, (job, tool, row)
        assert row["train_time_s"] > 0 and row["wall_s"] >= row["train_time_s"], (job, tool, row)
    for job in JOBS:  # the two hand-written loops run the same ops on the same batches: the same model
        plain, accelerate = rows[(job, "plain")], rows[(job, "accelerate")]
        assert (accelerate["final_loss"], accelerate["accuracy"]) == (plain["final_loss"], plain["accuracy"]), job
    summary = {(e["job"], e["tool"]): e for e in results["summary"]}
    assert all(summary[(job, "plain")]["train_ratio"] == 1.0 for job in JOBS)
    assert {job: sorted(tools) for job, tools in results["paired"].items()} == {  # one round: its own ratios
        job: sorted(set(TOOLS) - {"accel_train"}) for job in JOBS}
    one = results["paired"]["digits"]["plain"]
    assert one["train"] == rows[("digits", "accel_train")]["train_time_s"] / rows[("digits", "plain")]["train_time_s"]
    table = (tmp_path / "results.md").read_text().splitlines()
    rows_in_tables = [line for line in table if line.startswith(tuple(f"| {job} " for job in JOBS))]
    assert len(rows_in_tables) == 20 + 16  # a row per (job, tool), then per (job, other tool) paired with accel_train


def test_step_twin_gives_accel_trains_losses_bitwise():
    from step_overhead import measure

    figures = measure("digits", epochs=2, runs=1)  # the second epoch checks the order of its batches too
    assert figures["steps"] == 2 * 45 and figures["losses_bitwise_equal"]
    assert figures["twin_step_s"] > 0 and figures["accel_train_step_s"] > 0
