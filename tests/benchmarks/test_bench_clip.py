"""Benchmark (not part of `make test`; run `make bench`): examples/finetune_clip.py against a plain hand-written
Accelerate loop (tests/benchmarks/plain_clip.py) over the same CLIP model folder, image files, processor, batch
size, optimizer, schedule, epochs and 1 thread.

Runs are interleaved A B A B ... in one session; prints the median training samples/s of each (train loops only)
and the median whole-process wall time, and their ratios (median over pairs). Knobs: BENCH_RUNS, BENCH_EPOCHS,
BENCH_WIDTH, BENCH_LAYERS, BENCH_IMAGE (the model's image side; patches of a quarter of it).
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
RUNS = int(os.environ.get("BENCH_RUNS", "3"))
EPOCHS = os.environ.get("BENCH_EPOCHS", "3")
WIDTH, LAYERS = int(os.environ.get("BENCH_WIDTH", "128")), int(os.environ.get("BENCH_LAYERS", "2"))
IMAGE = int(os.environ.get("BENCH_IMAGE", "32"))
pytestmark = pytest.mark.benchmark


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "OMP_"))}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}


def _materials(root: Path) -> list[str]:
    """A CLIP folder of the benchmark's size and 1,000 + 200 digit images with caption files."""
    import json as _json

    import torch
    from transformers import AutoTokenizer, CLIPModel

    from support.multimodal import clip_config, write_digit_files, write_tokenizer_files

    model = root / "clip"
    write_tokenizer_files(model)
    config = _json.loads((model / "preprocessor_config.json").read_text())
    config.update(size={"shortest_edge": IMAGE}, crop_size={"height": IMAGE, "width": IMAGE})
    (model / "preprocessor_config.json").write_text(_json.dumps(config))
    clip = clip_config(AutoTokenizer.from_pretrained(model), WIDTH, LAYERS)
    clip.vision_config.image_size, clip.vision_config.patch_size = IMAGE, max(1, IMAGE // 4)
    torch.manual_seed(0)
    CLIPModel(clip).save_pretrained(model)
    train = write_digit_files(root / "data", range(0, 1000), "train.csv")
    val = write_digit_files(root / "data", range(1000, 1200), "val.csv")
    return ["--job.model", str(model), "--job.train-file", str(train), "--job.validation-file", str(val)]


def _accel(common: list[str], out: Path) -> tuple[float, float]:
    cmd = [sys.executable, str(REPO / "examples/finetune_clip.py"), *common, "--job.image-column", "image_path",
           "--epochs", EPOCHS, "--batch-size", "64", "--lr", "1e-4", "--warmup-steps", "10", "--num-threads", "1",
           "--progress", "false", "--output-dir", str(out)]
    tick = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env=_env())
    wall = time.perf_counter() - tick
    return json.loads((out / "summary.json").read_text())["samples_per_s"], wall


def _plain(common: list[str]) -> tuple[float, float]:
    flat = [arg.replace("--job.", "--") for arg in common]  # the plain twin's own flags
    cmd = [sys.executable, str(REPO / "tests/benchmarks/plain_clip.py"), *flat, "--threads", "1",
           "--epochs", EPOCHS, "--batch-size", "64", "--lr", "1e-4"]
    tick = time.perf_counter()
    proc = subprocess.run(cmd, check=True, capture_output=True, text=True, env=_env())
    wall = time.perf_counter() - tick
    return json.loads(proc.stdout.strip().splitlines()[-1])["samples_per_s"], wall


def test_clip_example_against_a_plain_accelerate_loop():
    accel, plain = [], []
    with tempfile.TemporaryDirectory() as tmp:
        common = _materials(Path(tmp))
        _plain(common), _accel(common, Path(tmp) / "warm")  # warm the page cache and .pyc files
        for i in range(RUNS):
            plain.append(_plain(common))
            accel.append(_accel(common, Path(tmp) / f"run{i}"))
    speed_ratio = statistics.median(a[0] / p[0] for a, p in zip(accel, plain))
    wall_ratio = statistics.median(a[1] / p[1] for a, p in zip(accel, plain))
    print(f"\nCLIP (width {WIDTH}, {LAYERS} layers per tower, {IMAGE}x{IMAGE} images), 1,000 pairs x {EPOCHS} epochs, "
          f"batch 64, 1 thread, {RUNS} interleaved pairs")
    print(f"  training samples/s  accel_train {statistics.median(a[0] for a in accel):7.1f}   "
          f"plain Accelerate {statistics.median(p[0] for p in plain):7.1f}   ratio (median of pairs) {speed_ratio:.3f}")
    print(f"  process wall        accel_train {statistics.median(a[1] for a in accel):6.2f} s   "
          f"plain Accelerate {statistics.median(p[1] for p in plain):6.2f} s   "
          f"ratio (median of pairs) {wall_ratio:.3f}")
    print("  pairs (samples/s)   " + ", ".join(f"{a[0]:.0f}/{p[0]:.0f}" for a, p in zip(accel, plain)))
    assert speed_ratio >= 0.90
