"""`diagnose`: each fault planted in a small model or job is found by its check, a healthy job passes, and
nothing is written."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from accel_train import TrainConfig, diagnose
from accel_train.cli import main
from accel_train.tasks.vision import load_digits_tensors

CFG = TrainConfig(batch_size=32, lr=3e-3, epochs=2)


@pytest.fixture(autouse=True)
def _threads(one_thread):
    """diagnose sets torch's threads as fit does; later tests get theirs back."""


@pytest.fixture(scope="module")
def digits():
    images, labels = load_digits_tensors()
    return TensorDataset(images[:256], labels[:256])


def _net(*hidden: nn.Module, outputs: int = 10) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), *hidden, nn.Linear(64, outputs))


def _verdicts(found) -> dict[str, str]:
    return {f.check: f.verdict for f in found.findings}


def test_a_healthy_job_passes_and_writes_nothing(tmp_path, monkeypatch, capsys, one_thread):
    monkeypatch.chdir(tmp_path)
    from support import REPO

    assert main(["diagnose", "--config", str(REPO / "examples/configs/digits.yaml"), "--overfit-steps", "40", "--job.channels", "8", "--num-threads", "1"]) == 0
    out = capsys.readouterr().out
    for check in ("inputs", "labels", "output vs loss", "metrics", "initial loss", "gradients", "parameters",
                  "schedule", "overfit"):
        assert f"OK    {check}" in out, (check, out)
    assert out.rstrip().endswith("-> healthy")
    assert main(["diagnose", "--config", str(REPO / "examples/configs/digits.yaml"), "--overfit-steps", "5",
                 "--lr", "1e-9", "--job.channels", "8", "--num-threads", "1"]) == 1  # a fault: exit 1, findings shown
    out = capsys.readouterr().out
    assert "FAIL  overfit         one batch of 16 for 5 steps" in out and out.rstrip().endswith("-> 1 check(s) failed")
    assert list(tmp_path.iterdir()) == []  # no run folder, nothing else


def test_healthy_model_initial_loss_is_near_ln_c(digits):
    found = diagnose(_net(), digits, None, config=CFG, processor=None, options={"any": "thing"})  # what fit takes
    assert found.healthy and set(_verdicts(found).values()) == {"ok"}
    loss = float(found["initial loss"].detail.split(";")[0])
    assert abs(loss - math.log(10)) < 0.2
    with pytest.raises(TypeError, match="unexpected keyword argument 'epochs'"):
        diagnose(_net(), digits, epochs=3)


def test_nan_inputs(digits):
    images, labels = digits.tensors
    images = images.clone()
    images[:, 0, 0, 0] = float("nan")
    found = diagnose(_net(), TensorDataset(images, labels), config=CFG)
    assert found["inputs"].verdict == "fail" and "NaN/inf" in found["inputs"].detail and not found.healthy
    found = diagnose(_net(), TensorDataset(digits.tensors[0] * 16 * 255, labels), config=CFG, overfit_steps=1)
    assert found["inputs"].verdict == "warn" and "normalise the inputs" in found["inputs"].detail


def test_labels_beyond_the_output_width(digits):
    found = diagnose(_net(outputs=6), digits, config=CFG)
    assert found["labels"].verdict == "fail"
    assert "all training labels span [0, 9] but the model has 6 outputs" in found["labels"].detail


def test_output_shape_against_the_loss(digits):
    found = diagnose(_net(), digits, config=CFG, loss="bce_with_logits", metrics=None)
    assert found["output vs loss"].verdict == "fail"
    assert found["output vs loss"].detail.startswith("output float32[32, 10], targets int64[32]: ")


def test_initial_loss_far_above_ln_c(digits):
    model = _net()
    with torch.no_grad():
        model[-1].weight.mul_(40)
    found = diagnose(model, digits, config=CFG)
    assert found["initial loss"].verdict == "fail" and "ln 10 = 2.303" in found["initial loss"].detail


def test_vanishing_and_exploding_gradients(digits):
    vanishing = _net(*[m for _ in range(12) for m in (nn.Linear(64, 64), nn.Sigmoid())])
    found = diagnose(vanishing, digits, config=CFG, overfit_steps=1)
    assert found["gradients"].verdict == "fail" and "vanishing" in found["gradients"].detail
    exploding = _net(*[nn.Linear(64, 64) for _ in range(6)])
    with torch.no_grad():
        for layer in exploding[3:-1]:
            layer.weight.mul_(8)
    found = diagnose(exploding, digits, config=CFG, overfit_steps=1)
    assert found["gradients"].verdict == "fail" and "exploding" in found["gradients"].detail


def test_parameters_without_gradient_frozen_or_outside_the_optimizer(digits):
    class Unused(nn.Module):
        def __init__(self):
            super().__init__()
            self.net, self.unused = _net(), nn.Linear(3, 3)  # defined, never called

        def forward(self, x):
            return self.net(x)

    found = diagnose(Unused(), digits, config=CFG)
    assert found["parameters"].verdict == "fail" and "no gradient reaches unused.weight, unused.bias" in \
        found["parameters"].detail
    model = _net()
    model[-1].requires_grad_(False)
    found = diagnose(model, digits, config=CFG)
    assert found["parameters"].verdict == "warn" and "frozen: 3.weight, 3.bias" in found["parameters"].detail
    model = _net()
    optimizer = torch.optim.AdamW(model[1].parameters(), lr=3e-3)  # forgets the head
    found = diagnose(model, digits, config=CFG, optimizer=optimizer)
    assert found["parameters"].verdict == "fail" and "the optimizer does not hold 3.weight, 3.bias" in \
        found["parameters"].detail


def test_schedule_and_overfitting(digits):
    cfg = TrainConfig(batch_size=32, lr=3e-3, epochs=2, scheduler="linear_warmup", warmup_steps=100)
    found = diagnose(_net(), digits, config=cfg)
    assert found["schedule"].verdict == "warn"
    assert "LR at steps 1-8: 0, 3e-05, 6e-05" in found["schedule"].detail and "16 steps" in found["schedule"].detail
    found = diagnose(_net(), digits, config=TrainConfig(batch_size=32, lr=1e-7), overfit_steps=10)
    assert found["overfit"].verdict == "fail" and not found.healthy
    assert found["overfit"].detail.startswith("one batch of 16 for 10 steps: loss ")


def test_diagnose_help_names_its_own_flag_first(capsys):
    from accel_train.diagnosis import main

    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    assert capsys.readouterr().out.splitlines()[:2] == [
        "accel-train diagnose: one batch of the job checked before training, nothing written; exit 1 on a FAIL.",
        "  --overfit-steps N  steps of the overfit-one-batch check (default 50); and the job's keys:"]
