"""Refactored equals before: each task family's first 20 training losses and final weights, pinned in tests/golden/.

Tolerance: none on the kernels that wrote the files. In fp32, one process and one thread, the same code on the same
kernels computes the same bits, so the losses are compared as floats for equality and the weights by SHA-256; a
difference in the last bit is a change in what the project computes, to be explained (and the files regenerated with
`python tests/golden/jobs.py`) in the commit that makes it. The suite pins torch's AVX2 kernels; a CPU whose pinned
kernels still add in another order is compared within 1e-4, with a warning (golden/kernels.py, `jobs.compare`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from support import check, launch
from golden import kernels
from golden.jobs import compare, ddp_args, jobs, path, result, run


@pytest.mark.parametrize("name", list(jobs(Path("."))))
def test_one_process_numbers_are_unchanged(name, cifar_copy, tmp_path, one_thread):
    got = run(name, cifar_copy, tmp_path / name)
    assert got["steps"] == list(range(1, 21))
    compare(name, got)


@pytest.mark.multiprocess
def test_two_process_ddp_numbers_are_unchanged(tmp_path):
    check(launch([*ddp_args(tmp_path), "--output-dir", str(tmp_path / "ddp")]))
    compare("digits_ddp", result(tmp_path / "ddp"))


def test_compare_asks_for_the_same_bits_on_the_same_kernels_and_1e4_on_others(monkeypatch):
    expected = json.loads(path("digits").read_text())
    same = {key: expected[key] for key in ("steps", "losses", "weights_sha256", "weights_norm")}
    last_bit = {**same, "losses": [math.nextafter(same["losses"][0], 0.0), *same["losses"][1:]]}
    off = {**same, "losses": [same["losses"][0] * (1 + 3e-4), *same["losses"][1:]]}
    heavier = {**same, "weights_norm": same["weights_norm"] * (1 + 3e-4)}
    monkeypatch.setattr(kernels, "fingerprint", lambda: expected["kernels"])
    compare("digits", same)
    with pytest.raises(AssertionError):
        compare("digits", last_bit)
    monkeypatch.setattr(kernels, "fingerprint", lambda: "0" * 16)
    with pytest.warns(UserWarning, match=rf"^golden digits: this machine's kernels \(fingerprint 0{{16}}\) are not "
                                         rf"those that wrote the file \({expected['kernels']}\): 20 losses"):
        compare("digits", last_bit)
    for changed in (off, heavier):
        with pytest.raises(AssertionError), pytest.warns(UserWarning):
            compare("digits", changed)
    resnet = json.loads(path("cifar_resnet").read_text())
    with pytest.warns(UserWarning, match="4 losses"):  # the tiny-batch ResNet: its first 4 losses alone
        compare("cifar_resnet", {**resnet, "losses": [*resnet["losses"][:4], *[0.0] * 16]})


OTHER_KERNELS = {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE", "ONEDNN_MAX_CPU_ISA": "SSE41"}
ON_OTHER_KERNELS = """
import sys, tempfile, warnings
from pathlib import Path
import torch
from golden.jobs import compare, run
torch.set_num_threads(1)
with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings(record=True) as seen:
    warnings.simplefilter("always")
    for name in sys.argv[1:]:
        compare(name, run(name, Path(tmp), Path(tmp) / name))
print(*[w.message for w in seen if str(w.message).startswith("golden")], sep="\\n")
"""


def test_the_golden_jobs_hold_within_the_tolerance_on_other_kernels(tmp_path):
    """The files hold on another CPU's kernels: here, torch's unvectorised ones, MKL's and oneDNN's oldest."""
    import os
    import subprocess
    import sys

    tests = Path(__file__).resolve().parent
    env = {**os.environ, **OTHER_KERNELS, "PYTHONPATH": f"{tests}{os.pathsep}{tests.parent}"}
    done = subprocess.run([sys.executable, "-c", ON_OTHER_KERNELS, "digits", "clip"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    warned = done.stdout.splitlines()[-2:]
    assert [line.split(":")[0] for line in warned] == ["golden digits", "golden clip"]
    assert all(line.endswith("20 losses compared within 0.0001, not bit for bit") for line in warned)
