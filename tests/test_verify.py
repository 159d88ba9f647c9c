"""`accel-train verify` on a user's job: passes where the claims hold, names the first step where runs part."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from safetensors.torch import save_file
import torch

from accel_train.verify import compare_runs
from support import CONFIGS, SCRIPTS, check, clean_env, run_python


def _fake_run(folder: Path, losses: list[float], weight: float) -> Path:
    folder.mkdir(parents=True)
    rows = [{"kind": "step", "step": i + 1, "train/loss": loss} for i, loss in enumerate(losses)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    save_file({"w": torch.full((3,), weight)}, str(folder / "model.safetensors"))
    return folder


def test_compare_runs_names_the_first_step_that_parts(tmp_path):
    ref = _fake_run(tmp_path / "ref", [2.0, 1.5, 1.2, 1.0], 1.0)
    same = _fake_run(tmp_path / "same", [2.0, 1.5, 1.2, 1.0], 1.0)
    close = _fake_run(tmp_path / "close", [2.0, 1.5 + 1e-9, 1.2, 1.0], 1.0 + 1e-8)
    parted = _fake_run(tmp_path / "parted", [2.0, 1.5, 1.25, 1.1], 1.1)
    assert compare_runs(ref, same, 0.0) == (True, "bitwise equal, 4 steps")
    assert compare_runs(ref, close, 0.0)[0] is False
    assert compare_runs(ref, close, 1e-6)[0] is True
    assert compare_runs(ref, parted, 1e-6) == (False, "the runs part at step 3: loss 1.25 vs 1.2")
    assert compare_runs(ref, parted, 0.0, after=3)[1].startswith("the runs part at step 4")
    weights_only = _fake_run(tmp_path / "weights", [2.0, 1.5, 1.2, 1.0], 1.5)
    assert "final weights differ by 0.5" in compare_runs(ref, weights_only, 1e-6)[1]


@pytest.mark.multiprocess
def test_verify_passes_on_an_exact_job(tmp_path, digits_file):
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({
        "name": "eq", "job": {"class_path": "equivalence_job.Equivalence", "init_args": {"data": digits_file}},
        "batch_size": 8, "grad_accum": 2, "optimizer": "adamw", "lr": 0.01, "scheduler": "linear_warmup",
        "warmup_steps": 2, "max_grad_norm": 1.0}))
    env = clean_env(PYTHONPATH=f"{SCRIPTS}:{SCRIPTS.parent.parent}")
    proc = check(run_python(["-m", "accel_train", "verify", "--config", str(job), "--launch-config",
                             str(CONFIGS / "cpu_ddp.yaml"), "--steps", "6", "--workdir", str(tmp_path / "w")],
                            env=env))
    lines = proc.stdout.splitlines()
    assert any(line.strip().startswith("PASS  2 processes == 1 process") for line in lines), proc.stdout
    assert any(line.strip().startswith("PASS  resumed at step 3 == uninterrupted  bitwise equal, 3 steps")
               for line in lines), proc.stdout
    assert any(line.strip().startswith("PASS  precision fp32") and "float32" in line for line in lines), proc.stdout
