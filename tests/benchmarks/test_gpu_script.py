"""The GPU throughput script runs end to end at tiny sizes on any device, so it is ready when a GPU is."""

from __future__ import annotations

import json

from support import REPO, run_python


def test_gpu_throughput_script_smoke(tmp_path):
    out = tmp_path / "figures.json"
    proc = run_python([str(REPO / "tests/benchmarks/gpu_throughput.py"), "--smoke", "--out", str(out)], timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["gpt2"]["per_step"] == 4 * 32 and figures["resnet"]["per_step"] == 8
    # timings at tiny sizes are noise: the figures are there, their values are for a GPU
    assert {"tokens_per_s", "warmup_s", "flops_per_token"} <= set(figures["gpt2"])
    assert "images_per_s" in figures["resnet"]
    assert [(f["precision"], f["host_sync"]) for f in figures["sync_free"]] == [("no", None), ("bf16", None)]
    assert figures["device"] == "cpu" or figures["gpt2"]["mfu"] > 0
