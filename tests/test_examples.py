"""Every example runs: the digits script, and the CIFAR-10 ResNet-18 on a small local copy in torchvision's
on-disk format (the real download path is the same code with --download true)."""

from __future__ import annotations

import hashlib
import pickle
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest

from accel_train import read_summary
from conftest import REPO

EXAMPLES = REPO / "examples"


def _run_example(name: str, argv: list[str]) -> dict:
    sys.path.insert(0, str(EXAMPLES))
    try:
        module = runpy.run_path(str(EXAMPLES / name), run_name="example")
        return module["main"](argv)
    finally:
        sys.path.remove(str(EXAMPLES))


def test_digits_example(tmp_path):
    summary = _run_example("train_digits.py", ["--epochs", "4", "--channels", "16", "--output-dir",
                                               str(tmp_path / "d"), "--progress", "false"])
    assert summary["best_metric"] > 0.95 and read_summary(tmp_path / "d")["epochs"] == 4


def _fake_cifar(root: Path, train: int, test: int) -> dict[str, str]:
    """A tiny CIFAR-10 in torchvision's pickled layout; returns each file's md5 for torchvision's check."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)

    def batch(n: int) -> dict:
        labels = rng.integers(0, 10, n)
        images = rng.integers(0, 60, (n, 3, 32, 32), dtype=np.uint8)
        images[np.arange(n), labels % 3] += np.uint8(150)  # a learnable colour cue per class group
        return {"data": images.reshape(n, -1), "labels": labels.tolist()}

    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        with open(folder / name, "wb") as handle:
            pickle.dump(batch(train // 5 if name != "test_batch" else test), handle)
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, handle)
    return {name: hashlib.md5((folder / name).read_bytes()).hexdigest() for name in names + ["batches.meta"]}


def test_cifar10_example_on_a_local_copy(tmp_path, monkeypatch):
    from torchvision.datasets import CIFAR10

    md5 = _fake_cifar(tmp_path / "data", train=80, test=40)
    monkeypatch.setattr(CIFAR10, "train_list", [[n, md5[n]] for n in md5 if n.startswith("data_batch")])
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", md5["test_batch"]]])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": md5["batches.meta"]})
    summary = _run_example("train_cifar10.py", [
        "--root", str(tmp_path / "data"), "--epochs", "1", "--batch-size", "16", "--num-workers", "0",
        "--warmup-steps", "1", "--lr", "0.05", "--output-dir", str(tmp_path / "c"), "--progress", "false"])
    assert summary["samples"] == 80 and summary["final_val"]["samples"] == 40 and summary["steps"] == 5
    plan = __import__("json").loads((tmp_path / "c" / "plan.json").read_text())
    assert plan["trainable_parameters"] == 11_173_962  # ResNet-18 with the 3x3 CIFAR stem


def test_cifar10_missing_data_is_a_clear_error(tmp_path):
    from accel_train import UserError

    with pytest.raises(UserError, match="CIFAR-10 not found.*Set download to true"):
        _run_example("train_cifar10.py", ["--root", str(tmp_path / "none"), "--output-dir", str(tmp_path / "c")])
