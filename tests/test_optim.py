"""Optimizers and schedules: values at given steps, and no weight decay on biases and norms."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from accel_train import TrainConfig
from accel_train.optim import (build_optimizer, build_plateau, build_scheduler, param_groups, steps_per_epoch,
                               total_steps)


def _model():
    return nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))


def _trajectory(cfg: TrainConfig, steps: int) -> list[float]:
    optimizer = build_optimizer(cfg, _model())
    scheduler = build_scheduler(cfg, optimizer, steps)
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_no_decay_on_biases_and_norms():
    model = _model()
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(model[0].weight), id(model[2].weight)}
    assert {id(p) for p in no_decay["params"]} == {id(model[0].bias), id(model[1].weight), id(model[1].bias),
                                                    id(model[2].bias)}


@pytest.mark.parametrize("name,kind", [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam),
                                       ("adamw", torch.optim.AdamW)])
def test_optimizers(name, kind):
    cfg = TrainConfig(optimizer=name, lr=0.5, momentum=0.8, nesterov=True, betas=(0.8, 0.9), weight_decay=0.01)
    optimizer = build_optimizer(cfg, _model())
    assert type(optimizer) is kind and optimizer.defaults["lr"] == 0.5
    if name == "sgd":
        assert optimizer.defaults["momentum"] == 0.8 and optimizer.defaults["nesterov"] is True
    else:
        assert optimizer.defaults["betas"] == (0.8, 0.9)


def test_linear_warmup_then_linear_decay():
    lrs = _trajectory(TrainConfig(lr=1.0, scheduler="linear_warmup", warmup_steps=4), 12)
    assert lrs[:5] == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])
    assert lrs[5:] == pytest.approx([1 - i / 8 for i in range(1, 8)])


def test_cosine_warmup_with_floor():
    lrs = _trajectory(TrainConfig(lr=1.0, scheduler="cosine_warmup", warmup_steps=2, min_lr=0.1), 10)
    assert lrs[:3] == pytest.approx([0.0, 0.5, 1.0])
    expected = [0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - 2) / 8)) for s in range(2, 10)]
    assert lrs[2:] == pytest.approx(expected)


def test_step_multistep_exponential_cosine_constant():
    assert _trajectory(TrainConfig(lr=1.0, scheduler="step", step_size=3, gamma=0.5), 7) == pytest.approx(
        [1, 1, 1, 0.5, 0.5, 0.5, 0.25])
    assert _trajectory(TrainConfig(lr=1.0, scheduler="multistep", milestones=[2, 5], gamma=0.1), 6) == pytest.approx(
        [1, 1, 0.1, 0.1, 0.1, 0.01])
    assert _trajectory(TrainConfig(lr=1.0, scheduler="exponential", gamma=0.5), 4) == pytest.approx(
        [1, 0.5, 0.25, 0.125])
    cosine = _trajectory(TrainConfig(lr=1.0, scheduler="cosine", min_lr=0.0), 5)
    assert cosine == pytest.approx([0.5 * (1 + math.cos(math.pi * s / 5)) for s in range(5)])
    assert _trajectory(TrainConfig(lr=0.3), 4) == pytest.approx([0.3] * 4)


def test_plateau_lowers_lr_after_patience_and_keeps_it():
    cfg = TrainConfig(lr=1.0, scheduler="plateau", gamma=0.5, plateau_patience=1)
    optimizer = build_optimizer(cfg, _model())
    per_step, plateau = build_scheduler(cfg, optimizer, 10), build_plateau(cfg, optimizer, "max")
    lrs = []
    for metric in (0.5, 0.6, 0.6, 0.6, 0.6):
        for _ in range(3):  # the per-step scheduler must not undo plateau's change
            optimizer.step()
            per_step.step()
        plateau.step(metric)
        lrs.append(optimizer.param_groups[0]["lr"])
    assert lrs == pytest.approx([1.0, 1.0, 1.0, 0.5, 0.5])


def test_schedule_length_rule():
    assert steps_per_epoch(10, 3) == 4  # the short last window is a step
    assert total_steps(TrainConfig(epochs=3, grad_accum=3), 10) == 12
    assert total_steps(TrainConfig(max_steps=7), None) == 7
