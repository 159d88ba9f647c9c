"""Refactored equals before: each task family's first 20 training losses and final weights, pinned in tests/golden/.

Tolerance: none. In fp32, one process and one thread on the same CPU, the same code computes the same bits, so the
losses are compared as floats for equality and the weights by SHA-256; a difference in the last bit is a change in
what the project computes, to be explained (and the files regenerated with `python tests/golden/jobs.py`) in the
commit that makes it.
"""

from __future__ import annotations

import json

import pytest
import torch

from conftest import check, launch
from golden.jobs import ddp_args, jobs, path, prepare, result, run


@pytest.fixture(scope="module")
def golden_data(tmp_path_factory):
    return tmp_path_factory.mktemp("golden-data")


@pytest.fixture(scope="module")
def cifar_md5(golden_data):
    return prepare(golden_data)


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)  # the golden jobs run on one thread; later tests get the machine back


@pytest.mark.parametrize("name", list(jobs(__import__("pathlib").Path("."))))
def test_one_process_numbers_are_unchanged(name, golden_data, cifar_md5, tmp_path, monkeypatch, one_thread):
    from torchvision.datasets import CIFAR10

    monkeypatch.setattr(CIFAR10, "train_list", [[n, cifar_md5[n]] for n in cifar_md5 if n.startswith("data_batch")])
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", cifar_md5["test_batch"]]])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": cifar_md5["batches.meta"]})
    expected = json.loads(path(name).read_text())
    got = run(name, golden_data, tmp_path / name)
    assert got["steps"] == list(range(1, 21))
    assert got["losses"] == expected["losses"]
    assert got["weights_sha256"] == expected["weights_sha256"]


@pytest.mark.multiprocess
def test_two_process_ddp_numbers_are_unchanged(golden_data, tmp_path):
    expected = json.loads(path("digits_ddp").read_text())
    check(launch([*ddp_args(golden_data), "--output-dir", str(tmp_path / "ddp")]))
    got = result(tmp_path / "ddp")
    assert got["losses"] == expected["losses"]
    assert got["weights_sha256"] == expected["weights_sha256"]
