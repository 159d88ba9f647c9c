"""The LR finder on the digits job: its suggestion lies in the steep descent of its own loss curve; it writes only
its plot and numbers, and leaves the model it was given as it was."""

from __future__ import annotations

import json

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from accel_train import TrainConfig, lr_find
from accel_train.cli import main as cli_main
from support import REPO


def test_suggestion_lies_in_the_steep_descent_on_the_digits_job(tmp_path, monkeypatch, capsys, one_thread):
    monkeypatch.chdir(tmp_path)
    assert cli_main(["lr-find", "--config", str(REPO / "examples/configs/digits.yaml"), "--job.channels", "8",
                     "--num-steps", "100", "--num-threads", "1", "--out", "finder", "--output-dir", "mine"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["finder"]  # no run folder, not even the one asked for
    found = json.loads((tmp_path / "finder" / "lr_find.json").read_text())
    lrs, smoothed, suggestion = np.array(found["lrs"]), np.array(found["smoothed"]), found["suggestion"]
    assert capsys.readouterr().out.startswith(f"lr-find: suggested lr {suggestion:.3g} (steepest descent")
    assert lrs[0] == 1e-7 and np.allclose(np.diff(np.log(lrs)), np.log(1e8) / 99)  # exponential, per step
    at, lowest = int(np.argmin(abs(lrs - suggestion))), int(np.argmin(smoothed))
    drop = smoothed[0] - smoothed[lowest]
    assert drop > 1.0 and 5 < at < lowest  # the loss fell by more than 1 (of 2.3), the suggestion before its lowest
    # within the descent: between 20% and 80% of the fall done, and the loss falls by 10% of it over the 4 steps
    # around the suggestion (a tenth of a decade of LR)
    assert 0.2 * drop < smoothed[0] - smoothed[at] < 0.8 * drop
    assert smoothed[at - 2] - smoothed[at + 2] > 0.1 * drop
    assert 3e-4 < suggestion < 3e-2  # within a decade of the 3e-3 the digits job trains at
    import matplotlib.image

    assert matplotlib.image.imread(tmp_path / "finder" / "lr_find.png").shape[:2] == (450, 700)


def test_the_model_given_keeps_its_weights(tmp_path, one_thread):
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = TensorDataset(torch.randn(32, 4), torch.randint(0, 3, (32,)))
    result = lr_find(model, data, config=TrainConfig(batch_size=8, num_threads=1), num_steps=12, out=tmp_path)
    assert len(result.lrs) == len(result.losses) == 12 and result.plot == str(tmp_path / "lr_find.png")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
