"""The end-of-run figures drawn by a forked child (plots.RunEndPlots): the same PNGs as `accel-train plot`, drawn
by the child and not the run, the run's own drawing when the child is gone, and no child left behind."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from accel_train import TrainConfig, fit, plots
from accel_train.plots import RunEndPlots, write_plots
from accel_train.tasks.vision import load_digits_tensors

pytestmark = pytest.mark.skipif(not hasattr(os, "fork") or sys.platform == "darwin", reason="needs fork")
NAMES = ("epochs.png", "steps.png", "confusion_matrix.png")


@pytest.fixture(autouse=True)
def plots_on(monkeypatch):
    monkeypatch.setenv("ACCEL_TRAIN_PLOTS", "1")  # the suite turns them off elsewhere


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, dict[str, bytes]]:
    """A short digits run and its figures as `accel-train plot` draws them in this process."""
    images, labels = load_digits_tensors()
    out, threads = tmp_path_factory.mktemp("run"), torch.get_num_threads()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 64, 10))
    try:
        fit(model, TensorDataset(images[:256], labels[:256]), TensorDataset(images[256:384], labels[256:384]),
            config=TrainConfig(epochs=1, batch_size=32, log_every=2, progress=False, num_threads=1, output_dir=str(out / "run")),
            loss="cross_entropy", metrics=["accuracy"])
    finally:
        torch.set_num_threads(threads)
    drawn = write_plots(out / "run", out / "here")
    assert sorted(p.name for p in drawn) == sorted(NAMES)
    return out / "run", {p.name: p.read_bytes() for p in drawn}


def _warmed(folder: Path) -> RunEndPlots:
    """The run folder without its figures, and a child forked for it."""
    for name in NAMES:
        (folder / "plots" / name).unlink(missing_ok=True)
    figures = RunEndPlots()
    figures.warm(folder)
    return figures


def _reaped(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return False


def test_the_child_draws_the_same_figures(run, monkeypatch):
    folder, expected = run
    figures = _warmed(folder)
    pid = figures.pid
    assert pid is not None and pid != os.getpid()
    monkeypatch.setattr(plots, "at_run_end", lambda *a: pytest.fail("the run drew the figures itself"))
    figures.start(folder)
    figures.finish(folder, print)
    assert {name: (folder / "plots" / name).read_bytes() for name in NAMES} == expected
    assert figures.pid is None and _reaped(pid)


def test_a_child_that_died_leaves_the_figures_to_the_run(run):
    folder, expected = run
    figures = _warmed(folder)
    pid = figures.pid
    os.kill(pid, signal.SIGKILL)
    figures.start(folder)  # the pipe has no reader any more
    figures.finish(folder, print)
    assert {name: (folder / "plots" / name).read_bytes() for name in NAMES} == expected
    assert _reaped(pid)


def test_no_child_is_left_behind_and_none_is_forked_early_or_when_plots_are_off(run, monkeypatch):
    folder, _ = run
    figures = RunEndPlots()
    figures.warm(folder, remaining_s=2.5)  # more than 2 s of training left: not yet
    assert figures.pid is None
    figures.warm(folder, remaining_s=1.5)
    pid = figures.pid
    assert pid is not None
    figures.close()  # never told to draw: it reads the closed pipe and leaves
    assert figures.pid is None and _reaped(pid)
    monkeypatch.setenv("ACCEL_TRAIN_PLOTS", "0")
    figures.warm(folder)
    figures.start(folder)
    assert figures.pid is None
