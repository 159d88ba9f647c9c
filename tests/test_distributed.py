"""Real `accelerate launch` runs: 2 CPU processes (cpu_ddp.yaml) and 2 simulated machines (multi_node.yaml)
must give the results of one process."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from accel_train import read_metrics, read_summary
from support import SCRIPTS, check, clean_env, free_port, launch, run_python, CONFIGS, BIN, REPO

pytestmark = pytest.mark.multiprocess

TRAIN = ["--optimizer", "adamw", "--scheduler", "linear_warmup", "--warmup-steps", "3", "--lr", "0.01",
         "--epochs", "2", "--log-every", "1", "--weight-decay", "0.1", "--max-grad-norm", "1.0", "--progress", "false"]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "model.safetensors")


def _lrs(run: Path) -> list[float]:
    return [row["lr"] for row in read_metrics(run) if row["kind"] == "step"]


@pytest.fixture(scope="module")
def single_run(tmp_path_factory) -> Path:
    """1 process, batch 32: the reference for the DDP runs (300 samples: a short last window)."""
    out = tmp_path_factory.mktemp("single") / "run"
    check(run_python([str(SCRIPTS / "equivalence.py"), *TRAIN, "--batch-size", "32", "--output-dir", str(out)]))
    return out


def test_ddp_two_processes_equal_one_process(single_run, tmp_path):
    """2 processes x batch 8 x accumulation 2 == 1 process x batch 32: weights within 1e-6, same LR at every step."""
    out = tmp_path / "ddp"
    check(launch([str(SCRIPTS / "equivalence.py"), *TRAIN, "--batch-size", "8", "--grad-accum", "2",
                  "--log-with", "tensorboard", "--output-dir", str(out)]))
    events = [p for p in (out / "tensorboard").glob("events.out.tfevents.*")]
    assert len(events) == 1, "one set of logs: the main process's"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(out / "tensorboard"))
    accumulator.Reload()
    points = accumulator.Scalars("lr")
    assert [e.step for e in points] == list(range(1, 21))
    assert [e.value for e in points] == pytest.approx(_lrs(out), rel=1e-6)
    plan = json.loads((out / "plan.json").read_text())
    assert plan["processes"] == 2 and plan["distributed_type"] == "MULTI_CPU"
    assert plan["threads_per_process"] == max(1, len(os.sched_getaffinity(0)) // 2)
    assert plan["effective_batch"] == 32 and plan["steps_per_epoch"] == 10 and plan["total_steps"] == 20
    ref, ddp = _weights(single_run), _weights(out)
    assert ref.keys() == ddp.keys()
    for key in ref:
        torch.testing.assert_close(ddp[key], ref[key], rtol=0, atol=1e-6)
    assert _lrs(out) == _lrs(single_run) and len(_lrs(out)) == 20
    # every one of the 300 samples counted once per epoch, in both runs
    assert read_summary(out)["samples"] == read_summary(single_run)["samples"] == 600
    assert read_summary(out)["final_train"] == pytest.approx(read_summary(single_run)["final_train"], abs=1e-6)


def test_multi_node_two_machines_equal_one_process(single_run, tmp_path):
    """multi_node.yaml simulated as 2 machines x 1 process on loopback: same weights as 1 process."""
    out, port = tmp_path / "nodes", free_port()
    # both simulated machines share this host's cores: one thread each
    args = [str(SCRIPTS / "equivalence.py"), *TRAIN, "--batch-size", "16", "--num-threads", "1", "--output-dir", str(out)]
    cmd = lambda rank: [str(BIN / "accelerate"), "launch", "--config_file", str(CONFIGS / "multi_node.yaml"),  # noqa: E731
                        "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1",
                        "--main_process_port", str(port), *args]
    procs = [subprocess.Popen(cmd(rank), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=clean_env(), cwd=REPO) for rank in (0, 1)]
    results = [p.communicate(timeout=300) for p in procs]
    for proc, (stdout, stderr) in zip(procs, results):
        assert proc.returncode == 0, stderr[-5000:]
    assert json.loads((out / "plan.json").read_text())["processes"] == 2
    ref, nodes = _weights(single_run), _weights(out)
    for key in ref:
        torch.testing.assert_close(nodes[key], ref[key], rtol=0, atol=1e-6)
    assert _lrs(out) == _lrs(single_run)


def test_eval_counts_every_digit_once_under_ddp(tmp_path):
    """1,797 digits over 2 processes x batch 64 (not divisible): the same metrics as 1 process, on 1,797 samples."""
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    check(run_python([str(SCRIPTS / "eval_digits.py"), str(one), "64"]))
    check(launch([str(SCRIPTS / "eval_digits.py"), str(two), "64"]))
    single, ddp = json.loads(one.read_text()), json.loads(two.read_text())
    assert single["processes"] == 1 and ddp["processes"] == 2
    assert single["samples"] == ddp["samples"] == 1797
    for key in ("accuracy", "f1", "loss"):
        assert ddp[key] == pytest.approx(single[key], rel=1e-9, abs=1e-12), key
    # the per-class report's confusion matrix: the same gathered predictions, each digit counted once
    assert ddp["confusion"] == single["confusion"] and sum(map(sum, ddp["confusion"])) == 1797
    assert 0.0 < single["accuracy"] < 1.0


def test_readme_script_under_cpu_ddp(tmp_path):
    """The README's train.py, unchanged, trains with 2 processes and reaches useful accuracy."""
    proc = check(launch([str(REPO / "examples" / "train.py")], cwd=tmp_path))
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1, "both processes must write into one run folder"
    summary = read_summary(runs[0])
    assert summary["processes"] == 2 and summary["final_val"]["samples"] == 297
    assert summary["best_metric"] >= 0.85
    classes = json.loads((runs[0] / "classes" / "epoch_008.json").read_text())
    assert classes["samples"] == sum(map(sum, classes["confusion"])) == 297  # every validation digit once
    assert proc.stdout.count("done:") == 1, "only the main process prints"


def test_one_gradient_all_reduce_per_optimizer_step_under_accumulation(tmp_path):
    """2 processes, accumulation 4, 5 optimizer steps: DDP's comm hook sees 5 all-reduces (the small CNN's gradients
    fit one bucket), not 20; the micro-batches inside a window only accumulate."""
    check(launch([str(SCRIPTS / "comm_count.py"), str(tmp_path), "5", "4"]))
    counts = [json.loads((tmp_path / f"count_{rank}.json").read_text())["allreduce"] for rank in (0, 1)]
    assert counts == [5, 5]
