"""Run folders that stay small: final weights stored once (hard links, never rewritten through), --keep-checkpoints 0
keeps only the best, --save-optimizer false drops the optimizer state and is refused for --resume."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from accel_train import TrainConfig, UserError, fit, read_summary
from accel_train.checkpoint import complete_checkpoints
from accel_train.tidy import folder_bytes

from resume_job import Options, build  # noqa: E402


def _job(out: Path, **cfg):
    model, data, val = build(Options(samples=96), 2)
    settings = dict(output_dir=str(out), batch_size=16, epochs=2, progress=False, num_threads=1, lr=0.01)
    return fit(model, data, val, config=TrainConfig(**{**settings, **cfg}))


def test_the_final_weights_are_stored_once_and_a_resumed_run_never_writes_through_the_link(tmp_path, one_thread):
    out = tmp_path / "run"
    _job(out, keep_checkpoints=2)
    last = complete_checkpoints(out / "checkpoints")[-1]
    kept = last / "model.safetensors"
    assert os.path.samefile(kept, out / "model.safetensors") and kept.stat().st_nlink == 2
    before = load_file(kept)
    summary = _job(out, epochs=3, resume="auto", keep_checkpoints=2)  # ends by writing new final weights
    assert summary["epochs"] == 3 and kept.is_file()
    after = load_file(kept)
    assert all(torch.equal(before[k], after[k]) for k in before), "the old checkpoint kept its own weights"
    assert not torch.equal(load_file(out / "model.safetensors")["model.4.weight"], before["model.4.weight"])
    assert summary["run_dir_bytes"] == read_summary(out)["run_dir_bytes"]
    assert abs(folder_bytes(out) - summary["run_dir_bytes"]) <= (out / "summary.json").stat().st_size  # itself


def test_keep_0_and_no_optimizer_leave_only_the_best_weights(tmp_path, one_thread):
    full, small = tmp_path / "full", tmp_path / "small"
    _job(full, keep_checkpoints=2, epochs=3)
    summary = _job(small, keep_checkpoints=0, save_optimizer=False, epochs=3, monitor="loss")
    kept = complete_checkpoints(small / "checkpoints")
    assert [p.name for p in kept] == [Path(summary["best_checkpoint"]).name]
    assert not list(small.rglob("optimizer*.bin")) and len(list(full.rglob("optimizer*.bin"))) == 2
    assert folder_bytes(small) < folder_bytes(full) / 2
    with pytest.raises(UserError) as error:
        _job(small, epochs=4, resume="auto")
    assert str(error.value).startswith(f"checkpoint {kept[0]} holds no optimizer state (the run ended with "
                                       "--save-optimizer false), so it cannot be resumed exactly.")


def test_keep_checkpoints_below_0_is_one_line():
    with pytest.raises(UserError, match=r"^keep_checkpoints must be 0 or more \(got -1\); 0 keeps only the best\.$"):
        TrainConfig(keep_checkpoints=-1)
