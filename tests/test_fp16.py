"""fp16 with a real GradScaler, proven on the CPU: torch's `torch.amp.GradScaler("cpu")` and fp16 autocast, attached
to a CPU Accelerator exactly where Accelerate attaches them on a GPU under mixed_precision=fp16.

A scaler overflow (what fp16's first steps do on purpose: the scale starts at 65,536 and backs off) is the scaler's
business: the step is skipped, the scale halves, the schedule waits, and it is not a non-finite step. A non-finite
loss still is.
"""

from __future__ import annotations

import importlib
import math

import pytest
import torch
from torch import nn

from accel_train import Task, TrainConfig, fit, read_summary, train_step
from accel_train.gradients import GradientWindow, NonFiniteError, NonFiniteGuard
from accel_train.launch import make_accelerator, shutdown

INIT_SCALE = 2.0 ** 16


def attach_fp16(accelerator) -> None:
    """What Accelerator.__init__ does for fp16 on a GPU: native autocast in float16 and a GradScaler."""
    accelerator.state._mixed_precision = "fp16"
    accelerator.native_amp = True
    accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=INIT_SCALE)


def _data(n: int = 32, seed: int = 0, size: float = 100.0):
    """Inputs of magnitude ~`size`: the weight gradients are ~`size`, so x 65,536 they overflow fp16 (max 65,504)."""
    generator = torch.Generator().manual_seed(seed)
    return size * torch.randn(n, 8, generator=generator), torch.randint(0, 4, (n,), generator=generator)


@pytest.fixture
def fp16_parts(request):
    settings = {"accum": 1, **getattr(request, "param", {})}
    accelerator, _ = make_accelerator(TrainConfig(cpu=True, grad_accum=settings["accum"], progress=False))
    attach_fp16(accelerator)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.9)
    model, optimizer = accelerator.prepare(model, optimizer)
    assert accelerator.scaler is optimizer.scaler and next(model.parameters()).dtype == torch.float32
    yield accelerator, model, optimizer, scheduler
    shutdown(accelerator)


def _train(parts, batches, **window):
    """train_step over `batches`; (the window, [was each optimizer step skipped?])."""
    accelerator, model, optimizer, scheduler = parts
    grads = GradientWindow(accelerator, model, **window)
    task, skipped = Task("cross_entropy", ["accuracy"]).for_run(), []
    for batch in batches:
        train_step(accelerator, model, task, batch, optimizer, scheduler, grads)
        if accelerator.sync_gradients:
            skipped.append(optimizer.step_was_skipped or not grads.ok)
            assert grads.ok or window.get("guard") is not None
    return grads, skipped


@pytest.mark.parametrize("clip", [None, 1.0], ids=["no-clipping", "clipping"])
def test_a_first_step_overflow_backs_the_scale_off_and_is_not_a_nonfinite_step(fp16_parts, clip):
    accelerator, model, optimizer, scheduler = fp16_parts
    before = [p.detach().clone() for p in model.parameters()]
    grads, skipped = _train(fp16_parts, [_data()], max_grad_norm=clip, guard=NonFiniteGuard("stop"))
    assert skipped == [True] and grads.ok  # the scaler skipped it; the guard (policy stop) did not fire
    assert accelerator.scaler.get_scale() == INIT_SCALE / 2 and scheduler.get_last_lr() == [1e-4]
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    _, more = _train(fp16_parts, [_data(seed=s) for s in range(1, 20)], max_grad_norm=clip,
                     guard=NonFiniteGuard("stop"))
    skipped += more
    # each overflow halves the scale (no growth within 2,000 steps): skipped steps == log2(65,536 / scale)
    assert sum(skipped) == math.log2(INIT_SCALE / accelerator.scaler.get_scale()) >= 2
    assert not skipped[-1]  # once the scale fits the gradients, the steps update
    assert scheduler.get_last_lr()[0] == pytest.approx(1e-4 * 0.9 ** (20 - sum(skipped)))
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.mark.parametrize("fp16_parts", [{"accum": 2}], indirect=True)
def test_overflow_under_accumulation_skips_one_optimizer_step_per_window(fp16_parts):
    accelerator = fp16_parts[0]
    _, skipped = _train(fp16_parts, [_data(8, seed=s) for s in range(4)])
    assert len(skipped) == 2 and skipped[0] is True
    assert accelerator.scaler.get_scale() == INIT_SCALE / 2 ** sum(skipped)


def test_a_nan_loss_in_fp16_is_still_caught(fp16_parts):
    accelerator, model, optimizer, scheduler = fp16_parts
    x, y = _data(size=0.1)
    x[0, 0] = float("nan")
    guard = NonFiniteGuard("skip")
    grads, skipped = _train(fp16_parts, [(x, y)], guard=guard)
    assert not grads.ok and skipped == [True]
    grads, skipped = _train(fp16_parts, [_data(size=0.1, seed=s) for s in range(1, 16)])
    assert grads.ok and not skipped[-1]  # the scaler was left ready: overflows back off, then the steps update
    with pytest.raises(NonFiniteError, match="the loss or gradient norm is not finite"):
        _train(fp16_parts, [(x, y)], guard=NonFiniteGuard("stop"))


def _fp16_fit(monkeypatch):
    """fit() with the CPU fp16 set-up of this module in place of the launch's Accelerator."""
    fit_module = importlib.import_module("accel_train.fit")
    build = fit_module.make_accelerator

    def fp16_accelerator(cfg, **kwargs):
        accelerator, notes = build(cfg, **kwargs)
        attach_fp16(accelerator)
        return accelerator, notes

    monkeypatch.setattr(fit_module, "make_accelerator", fp16_accelerator)


def _run(tmp_path, name: str, **settings) -> dict:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    x, y = _data(96)
    data = torch.utils.data.TensorDataset(x, y)
    cfg = TrainConfig(output_dir=str(tmp_path / name), epochs=2, batch_size=16, lr=1e-3, progress=False,
                      log_every=1, nonfinite="stop", max_grad_norm=1.0, seed=0, **settings)
    summary = fit(model, data, data, config=cfg)
    if summary["stopped"]:
        return {"summary": summary}
    from safetensors.torch import load_file

    return {"summary": read_summary(tmp_path / name), "weights": load_file(tmp_path / name / "model.safetensors")}


def test_fit_in_fp16_skips_overflows_and_resumes_with_the_scale(tmp_path, monkeypatch):
    """Through fit(), --nonfinite stop: the first overflows back the scale off without stopping the run, and a run
    stopped at step 5 resumes with its scaler's scale and ends equal to the uninterrupted run."""
    _fp16_fit(monkeypatch)
    whole = _run(tmp_path, "whole")
    assert whole["summary"]["skipped_steps"] == 0 and whole["summary"]["steps"] == 12
    assert whole["summary"]["precision"] == "fp16 autocast + GradScaler"
    assert whole["summary"]["compute_dtype"] == "float16"
    _run(tmp_path, "part", stop_at_step=5)
    scaler = torch.load(next((tmp_path / "part" / "checkpoints").glob("step_0000005")) / "scaler.pt",
                        weights_only=True)
    assert scaler["scale"] < INIT_SCALE  # the backed-off scale is in the checkpoint
    resumed = _run(tmp_path, "part", resume="auto")
    assert resumed["summary"]["steps"] == 12
    for key, value in whole["weights"].items():
        assert torch.equal(resumed["weights"][key], value), key
