"""The EMA of the weights: the closed form after N steps, validation and export with --eval-ema, bitwise resume."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import TensorDataset

from accel_train import EMA, TrainConfig, fit, read_summary

QUIET = dict(progress=False, num_threads=1, log_every=1)


def _data(n: int, seed: int) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 6, generator=generator), torch.randint(0, 3, (n,), generator=generator))


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


@pytest.mark.parametrize("warmup", [False, True])
def test_ema_equals_the_closed_form_and_is_what_validation_and_export_use(tmp_path, warmup):
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2)
    seen = []  # the weights after each optimizer step (parameters and batch-norm statistics)
    optimizer.register_step_post_hook(lambda *_: seen.append(
        {k: v.detach().clone() for k, v in model.state_dict().items()}))
    ema = EMA(0.8, warmup=warmup)
    cfg = TrainConfig(batch_size=8, epochs=2, eval_ema=True, output_dir=str(tmp_path / "run"), **QUIET)
    fit(model, _data(40, 0), _data(24, 1), config=cfg, optimizer=optimizer, metrics=(), ema=ema)
    assert len(seen) == ema.updates == int(ema.averaged.n_averaged) == 10
    expected = dict(seen[0])  # the first update copies; update n keeps decay_n of the average
    for n, weights in enumerate(seen[1:], start=1):
        decay = min(0.8, (1 + n) / (10 + n)) if warmup else 0.8
        expected = {k: v if not v.is_floating_point() else decay * expected[k] + (1 - decay) * weights[k]
                    for k, v in weights.items()}
    averaged = ema.module.state_dict()
    for key, value in expected.items():
        torch.testing.assert_close(averaged[key], value, rtol=0, atol=1e-6)
    assert not torch.allclose(averaged["0.weight"], seen[-1]["0.weight"], atol=1e-3)  # not the trained weights
    exported = load_file(tmp_path / "run" / "model.safetensors")
    assert all(torch.equal(exported[k], averaged[k]) for k in exported)
    x, y = _data(24, 1).tensors
    with torch.no_grad():
        val_loss = F.cross_entropy(ema.module.eval()(x), y).item()
    assert read_summary(tmp_path / "run")["final_val"]["loss"] == pytest.approx(val_loss, abs=1e-6)


def test_ema_resumes_bitwise(tmp_path):
    """Stopped after step 7 and resumed: the average (with warm-up: its count is restored too) is bitwise the
    uninterrupted run's."""
    def run(out, **extra):
        ema = EMA(0.9, warmup=True)
        cfg = TrainConfig(batch_size=8, epochs=3, output_dir=str(out), optimizer="adamw", **QUIET, **extra)
        summary = fit(_model(), _data(40, 0), None, config=cfg, metrics=(), ema=ema)
        return ema, summary

    full, _ = run(tmp_path / "full")
    _, stopped = run(tmp_path / "parts", stop_at_step=7)
    resumed, _ = run(tmp_path / "parts", resume="auto")
    assert stopped["stopped"] == "--stop-at-step 7" and resumed.updates == full.updates == 15
    one, other = full.state_dict(), resumed.state_dict()
    assert one.keys() == other.keys() and all(torch.equal(one[k], other[k]) for k in one)
