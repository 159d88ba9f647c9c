"""The end-of-run figures' helper process: it draws them (the same bytes as `accel-train plot`), the run draws
them itself when the helper fails, a run that ends in an error kills it, and its messages are the run's lines."""

from __future__ import annotations

import subprocess

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import accel_train.plot_worker as plot_worker
from accel_train import Task, TrainConfig, UserError, fit
from accel_train.plots import at_run_end, write_plots
from accel_train.tasks.vision import load_digits_tensors

NAMES = ("epochs.png", "steps.png", "confusion_matrix.png")


@pytest.fixture
def helpers(monkeypatch):
    """Figures on; every helper process started, recorded."""
    monkeypatch.setenv("ACCEL_TRAIN_PLOTS", "1")
    started, original = [], subprocess.Popen

    def popen(*args, **kwargs):
        started.append(original(*args, **kwargs))
        return started[-1]

    monkeypatch.setattr(plot_worker.subprocess, "Popen", popen)
    return started


def _fit(tmp_path, model=None, **config):
    images, labels = load_digits_tensors()
    torch.manual_seed(0)
    model = model or nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    cfg = TrainConfig(**{"epochs": 2, "batch_size": 16, "log_every": 2, "progress": False, "num_threads": 1,
                         "output_dir": str(tmp_path / "run"), **config})
    fit(model, TensorDataset(images[:64], labels[:64]), TensorDataset(images[64:96], labels[64:96]), config=cfg,
        task=Task("cross_entropy", ["accuracy"]))
    return tmp_path / "run"


def test_the_helper_draws_the_figures(tmp_path, helpers, monkeypatch):
    monkeypatch.setattr(plot_worker.plots, "at_run_end", lambda *a: pytest.fail("the run drew the figures itself"))
    run = _fit(tmp_path)
    assert len(helpers) == 1 and helpers[0].returncode == -9  # ended by the run once its answer was read
    drawn = {name: (run / "plots" / name).read_bytes() for name in NAMES}
    write_plots(run, tmp_path / "inline")
    assert {name: (tmp_path / "inline" / name).read_bytes() for name in NAMES} == drawn


@pytest.mark.parametrize(("helper", "ended"), [("import sys; sys.exit(3)", 3), ("import time; time.sleep(60)", -9)],
                         ids=["exits", "hangs"])
def test_a_helper_that_fails_leaves_the_run_to_draw_them(tmp_path, helpers, monkeypatch, helper, ended):
    monkeypatch.setattr(plot_worker, "HELPER", helper)
    monkeypatch.setattr(plot_worker, "TIMEOUT_S", 1.0)
    run = _fit(tmp_path)
    assert len(helpers) == 1 and helpers[0].returncode == ended
    assert all((run / "plots" / name).stat().st_size > 10_000 for name in NAMES)


def test_a_run_that_fails_kills_its_helper(tmp_path, helpers):
    class Wrong(nn.Module):  # 5 logits for 10 classes: refused at the first step, after the helper started
        def forward(self, x):
            return x.flatten(1)[:, :5]

    with pytest.raises(UserError):
        _fit(tmp_path, model=nn.Sequential(Wrong(), nn.Linear(5, 5)))
    assert len(helpers) == 1 and helpers[0].returncode == -9
    assert not (tmp_path / "run" / "plots").exists()


def test_the_helpers_message_is_the_line_the_run_would_print(tmp_path, helpers, capsys, monkeypatch):
    monkeypatch.setattr(plot_worker.plots, "at_run_end", lambda *a: pytest.fail("the run drew the figures itself"))
    run = _fit(tmp_path, stop_at_step=1)  # stopped before an epoch finished: no figure to draw
    said = [line for line in capsys.readouterr().out.splitlines() if "finished epoch" in line]
    at_run_end(run, print)  # as the run draws them without the helper
    assert said == capsys.readouterr().out.splitlines() and len(said) == 1 and len(helpers) == 1
