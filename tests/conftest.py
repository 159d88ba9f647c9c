"""Fixtures shared by the whole suite; the helpers they and the tests use are in `support`."""

from __future__ import annotations

import os

import pytest

from golden import kernels

kernels.pin()  # torch's AVX2 kernels on every CPU that has them, for golden numbers that travel (golden/kernels.py)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# The suite's ~90 training runs would each draw their PNGs at the end (~0.5 s a run); tests/test_artifacts.py turns
# them on where it checks them.
os.environ.setdefault("ACCEL_TRAIN_PLOTS", "0")


@pytest.fixture(autouse=True)
def _single_process_env(monkeypatch):
    """In-process tests run as one plain process, whatever the shell that started pytest had set."""
    for key in list(os.environ):
        if key.startswith(("ACCELERATE_", "MASTER_")) or key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
            monkeypatch.delenv(key, raising=False)


@pytest.fixture(scope="session")
def digits_file(tmp_path_factory) -> str:
    """scikit-learn's digits as a torch file, so that test subprocesses skip importing scikit-learn."""
    import torch

    from accel_train.tasks.vision import load_digits_tensors

    path = tmp_path_factory.mktemp("data") / "digits.pt"
    torch.save(load_digits_tensors(), path)
    return str(path)


@pytest.fixture(scope="session")
def cifar_files(tmp_path_factory):
    """(data folder, md5 sums): the golden jobs' files, among them a tiny CIFAR-10 (80 train, 40 test images) in
    torchvision's on-disk layout under <data>/cifar."""
    from golden.jobs import prepare

    root = tmp_path_factory.mktemp("data")
    return root, prepare(root)


@pytest.fixture
def cifar_copy(cifar_files, monkeypatch):
    """The data folder, with torchvision's integrity check pointed at the tiny CIFAR-10's files."""
    from torchvision.datasets import CIFAR10

    root, md5 = cifar_files
    monkeypatch.setattr(CIFAR10, "train_list", [[n, md5[n]] for n in md5 if n.startswith("data_batch")])
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", md5["test_batch"]]])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": md5["batches.meta"]})
    return root


@pytest.fixture
def one_thread():
    """For tests that train with --num-threads 1 in this process: later tests get torch's thread count back."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
