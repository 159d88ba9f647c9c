"""Recipes under a real `accelerate launch` of 2 CPU processes: class weights stay torch's weighted mean over a
padded last batch, warm restarts count optimizer steps, the EMA is the same on every process, and the LR finder
gives one result."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from accel_train import read_metrics, read_summary
from recipes_ddp import data, model
from support import SCRIPTS, check, launch

pytestmark = pytest.mark.multiprocess


def test_class_weights_ema_and_finder_under_ddp(tmp_path, digits_file):
    check(launch([str(SCRIPTS / "recipes_ddp.py"), str(tmp_path), digits_file]))
    # the reference: full-batch gradient descent on torch's weighted, smoothed mean over the 13 samples, once each,
    # at the LRs of a cosine restarted after 2 optimizer steps (floor 0.2)
    (x, y), reference, weights = data().tensors, model(), torch.tensor([1.0, 2.0, 4.0])
    trajectory, losses = [], []
    for lr in (1.0, 0.6, 1.0):
        loss = F.cross_entropy(reference(x), y, weight=weights, label_smoothing=0.1)
        reference.zero_grad()
        loss.backward()
        losses.append(loss.item())
        with torch.no_grad():
            for p in reference.parameters():
                p -= lr * p.grad
        trajectory.append({k: v.detach().clone() for k, v in reference.state_dict().items()})
    final = load_file(tmp_path / "run" / "model.safetensors")
    for key in final:
        torch.testing.assert_close(final[key], trajectory[-1][key], rtol=0, atol=1e-6)
    assert read_summary(tmp_path / "run")["final_train"]["loss"] == pytest.approx(losses[-1], abs=1e-6)
    logged = [row["lr"] for row in read_metrics(tmp_path / "run") if row["kind"] == "step"]
    assert logged == pytest.approx([0.6, 1.0, 0.6])  # the LR after steps 1, 2, 3: restarted after step 2
    # decay 0.5 from the first step's weights: 0.25 w1 + 0.25 w2 + 0.5 w3, bitwise the same on both processes
    ema = [load_file(tmp_path / f"ema_{rank}.safetensors") for rank in (0, 1)]
    for key in final:
        assert torch.equal(ema[0][f"module.{key}"], ema[1][f"module.{key}"])
        expected = 0.25 * trajectory[0][key] + 0.25 * trajectory[1][key] + 0.5 * trajectory[2][key]
        torch.testing.assert_close(ema[0][f"module.{key}"], expected, rtol=0, atol=1e-6)
    assert int(ema[0]["n_averaged"]) == 3
    # the finder: one curve and one suggestion, the same on both processes and in the file the main process wrote
    found = [json.loads((tmp_path / f"finder_{rank}.json").read_text()) for rank in (0, 1)]
    written = json.loads((tmp_path / "finder" / "lr_find.json").read_text())
    assert found[0] == found[1] == [written["suggestion"], written["losses"]]
    assert len(written["losses"]) >= 10 and written["suggestion"] is not None
