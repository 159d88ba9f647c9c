"""Every example runs: the digits script, and the CIFAR-10 ResNet-18 on a small local copy in torchvision's
on-disk format (the real download path is the same code with --download true)."""

from __future__ import annotations


import pytest

from accel_train import read_summary
from support import run_example




def test_digits_example(tmp_path):
    summary = run_example("train_digits.py", ["--epochs", "4", "--job.channels", "16", "--output-dir",
                                               str(tmp_path / "d"), "--progress", "false"])
    assert summary["best_metric"] > 0.95 and read_summary(tmp_path / "d")["epochs"] == 4


def test_cifar10_example_on_a_local_copy(tmp_path, cifar_copy):
    summary = run_example("train_cifar10.py", [
        "--job.root", str(cifar_copy / "cifar"), "--epochs", "1", "--batch-size", "16", "--num-workers", "0",
        "--warmup-steps", "1", "--lr", "0.05", "--output-dir", str(tmp_path / "c"), "--progress", "false"])
    assert summary["samples"] == 80 and summary["final_val"]["samples"] == 40 and summary["steps"] == 5
    plan = __import__("json").loads((tmp_path / "c" / "plan.json").read_text())
    assert plan["trainable_parameters"] == 11_173_962  # ResNet-18 with the 3x3 CIFAR stem


def test_cifar10_missing_data_is_a_clear_error(tmp_path):
    from accel_train import UserError

    with pytest.raises(UserError, match="CIFAR-10 not found.*Set download to true"):
        run_example("train_cifar10.py", ["--job.root", str(tmp_path / "none"), "--output-dir", str(tmp_path / "c")])
