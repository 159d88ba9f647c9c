"""Refactored equals before: each task family's first 20 training losses and final weights, pinned in tests/golden/.

Tolerance: none. In fp32, one process and one thread on the same CPU, the same code computes the same bits, so the
losses are compared as floats for equality and the weights by SHA-256; a difference in the last bit is a change in
what the project computes, to be explained (and the files regenerated with `python tests/golden/jobs.py`) in the
commit that makes it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from support import check, launch
from golden.jobs import ddp_args, jobs, path, result, run


@pytest.mark.parametrize("name", list(jobs(Path("."))))
def test_one_process_numbers_are_unchanged(name, cifar_copy, tmp_path, one_thread):
    expected = json.loads(path(name).read_text())
    got = run(name, cifar_copy, tmp_path / name)
    assert got["steps"] == list(range(1, 21))
    assert got["losses"] == expected["losses"]
    assert got["weights_sha256"] == expected["weights_sha256"]


@pytest.mark.multiprocess
def test_two_process_ddp_numbers_are_unchanged(tmp_path):
    expected = json.loads(path("digits_ddp").read_text())
    check(launch([*ddp_args(tmp_path), "--output-dir", str(tmp_path / "ddp")]))
    got = result(tmp_path / "ddp")
    assert got["losses"] == expected["losses"]
    assert got["weights_sha256"] == expected["weights_sha256"]
