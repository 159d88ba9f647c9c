"""Checkpoints written in the background: a snapshot taken at the save, one write in flight, errors not lost.
(A SIGKILL during background writes: tests/test_checkpoint.py's save storm; resume after them: test_resume.py.)"""

from __future__ import annotations

import threading
import time

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import accel_train.checkpoint as checkpoint
from accel_train import TrainConfig
from accel_train.checkpoint import Checkpointer, Progress, resolve_resume
from accel_train.launch import make_accelerator
from accel_train.metrics import Meter, MetricSet


@pytest.fixture
def job(one_thread):
    accelerator, _ = make_accelerator(TrainConfig(cpu=True))
    torch.manual_seed(0)
    model = nn.Linear(64, 64)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model, optimizer = accelerator.prepare(model, optimizer)
    model(torch.randn(4, 64)).sum().backward()
    optimizer.step()
    return accelerator, model, Meter(accelerator, MetricSet([]))


@pytest.fixture
def slow_publish(monkeypatch):
    """The thread's fsync takes 0.3 s; counts how many run at once."""
    real, active, seen = checkpoint.fsync_tree, [0], []
    lock = threading.Lock()

    def slow(folder):
        with lock:
            active[0] += 1
            seen.append(active[0])
        time.sleep(0.3)
        real(folder)
        with lock:
            active[0] -= 1

    monkeypatch.setattr(checkpoint, "fsync_tree", slow)
    return seen


def test_a_save_returns_before_the_write_and_keeps_the_state_it_was_given(tmp_path, job, slow_publish):
    accelerator, model, meter = job
    saver = Checkpointer(tmp_path, keep=3, background=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    saver.save(accelerator, Progress(step=1), "step_0000001", model, meter)
    assert saver.latest() is None, "still being written"
    with torch.no_grad():
        model.weight.fill_(7.0)  # training goes on while the thread writes
    saver.save(accelerator, Progress(step=2), "step_0000002", model, meter)
    assert [p.name for p in checkpoint.complete_checkpoints(saver.root)] == ["step_0000001"]
    saver.wait()
    assert [p.name for p in checkpoint.complete_checkpoints(saver.root)] == ["step_0000001", "step_0000002"]
    first = load_file(saver.root / "step_0000001" / "model.safetensors")
    assert all(torch.equal(first[k], before[k]) for k in before), "the snapshot, not the weights after the save"
    assert torch.equal(load_file(saver.root / "step_0000002" / "model.safetensors")["weight"],
                       torch.full((64, 64), 7.0))
    assert slow_publish == [1, 1], "never two writes in flight"
    assert not any(p.name.startswith(".") for p in saver.root.iterdir())


def test_a_failed_background_write_is_raised_and_the_previous_checkpoint_stays_newest(tmp_path, job,
                                                                                      monkeypatch):
    accelerator, model, meter = job
    saver = Checkpointer(tmp_path, background=True)
    saver.save(accelerator, Progress(step=1), "step_0000001", model, meter)
    saver.wait()

    def disk_full(folder):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint, "fsync_tree", disk_full)
    saver.save(accelerator, Progress(step=2), "step_0000002", model, meter)
    with pytest.raises(OSError, match="No space left on device"):
        saver.wait()
    assert resolve_resume("auto", tmp_path).name == "step_0000001"
    assert (saver.root / ".tmp-step_0000002").is_dir()  # ignored by resuming, replaced by the next save
    saver.wait()  # the error was handed over once


def test_inline_saves_write_the_same_files(tmp_path, job):
    accelerator, model, meter = job
    for background in (False, True):
        saver = Checkpointer(tmp_path / str(background), background=background)
        saver.save(accelerator, Progress(step=1), "step_0000001", model, meter)
        saver.wait()
    inline, threaded = (tmp_path / str(b) / "checkpoints" / "step_0000001" for b in (False, True))
    assert sorted(p.name for p in inline.iterdir()) == sorted(p.name for p in threaded.iterdir())
    for name in ("model.safetensors", "optimizer.bin", "progress.json"):
        assert (inline / name).read_bytes() == (threaded / name).read_bytes(), name
