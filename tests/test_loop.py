"""`train_step` and `GradientWindow` on the CPU, unit by unit: accumulation, a short last window, clipping, the
skipped non-finite step, the stop policy, and parameters without a gradient."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from accel_train import Task, TrainConfig, evaluate, train_step
from accel_train.gradients import GradientWindow, NonFiniteError, NonFiniteGuard
from accel_train.launch import make_accelerator, shutdown

pytestmark = pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\(\)` has been overridden")  # the spy below


def _data(n: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=generator, dtype=torch.float64), torch.randint(0, 3, (n,), generator=generator)


class _Net(nn.Module):
    def __init__(self, spare: bool = False):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
        if spare:
            self.spare = nn.Linear(2, 2)  # never called: receives no gradient

    def forward(self, x):
        return self.net(x)


def _model(seed: int = 0, spare: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    return _Net(spare).double()


@pytest.fixture
def parts(request):
    """(accelerator, model, optimizer, scheduler): SGD lr 0.1, `accum` micro-batches per step, a `spare` layer."""
    settings = {"accum": 1, "spare": False, **getattr(request, "param", {})}
    accelerator, _ = make_accelerator(TrainConfig(grad_accum=settings["accum"], cpu=True, progress=False))
    model = _model(spare=settings["spare"])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    model, optimizer = accelerator.prepare(model, optimizer)
    yield accelerator, model, optimizer, scheduler
    shutdown(accelerator)


def _reference_gradient(x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    """The mean cross-entropy gradient over all of (x, y), with a fresh copy of the same model."""
    model = _model()
    nn.functional.cross_entropy(model(x), y).backward()
    return [p.grad.clone() for p in model.parameters()]


def _steps(parts, batches, **window):
    """Run train_step over `batches`; the window's gradients seen at each optimizer step, before the update."""
    accelerator, model, optimizer, scheduler = parts
    grads = GradientWindow(accelerator, model, **window)
    seen = []
    original_step = optimizer.optimizer.step

    def spy(*args, **kwargs):
        seen.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
        return original_step(*args, **kwargs)

    optimizer.optimizer.step = spy
    task = Task("cross_entropy", ["accuracy"]).for_run()
    for batch in batches:
        train_step(accelerator, model, task, batch, optimizer, scheduler, grads)
    return grads, seen


@pytest.mark.parametrize("parts", [{"accum": 4}], indirect=True)
def test_accumulation_over_4_micro_batches_equals_one_batch(parts):
    x, y = _data(32)
    grads, seen = _steps(parts, [(x[i:i + 8], y[i:i + 8]) for i in range(0, 32, 8)])
    assert len(seen) == 1  # one optimizer step for the 4 micro-batches
    for got, want in zip(seen[0], _reference_gradient(x, y)):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-15)
    assert parts[3].get_last_lr() == [0.05]  # the schedule stepped once


@pytest.mark.parametrize("parts", [{"accum": 4}], indirect=True)
def test_a_short_last_window_weighs_each_sample_once(parts):
    """Accumulation 4 over a loader of 8 + 8 + 4 samples: its end closes the window after 3 micro-batches, and the
    gradient is the mean over the 20 samples, not the mean of 3 batch means."""
    x, y = _data(20)
    loader = parts[0].prepare(torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8))
    grads, seen = _steps(parts, loader)
    assert len(seen) == 1
    for got, want in zip(seen[0], _reference_gradient(x, y)):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-15)


def test_clipping_returns_the_norm_before_and_leaves_the_clipped_norm(parts):
    x, y = _data(32)
    grads, seen = _steps(parts, [(x, y)], max_grad_norm=0.05)
    before = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in _reference_gradient(x, y)]))
    assert float(grads.norm) == pytest.approx(float(before), rel=1e-12) and float(before) > 0.05
    after = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in seen[0]]))
    assert float(after) == pytest.approx(0.05 * float(before) / (float(before) + 1e-6), rel=1e-12)  # torch's eps


def test_a_nan_loss_is_skipped_leaving_weights_optimizer_and_schedule_untouched(parts):
    accelerator, model, optimizer, scheduler = parts
    x, y = _data(32)
    x[3, 0] = float("nan")
    before = [p.detach().clone() for p in model.parameters()]
    grads, seen = _steps(parts, [(x, y)])
    assert not grads.ok and seen == [] and scheduler.get_last_lr() == [0.1]
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(p.grad is None for p in model.parameters())  # zero_grad ran: the next step starts clean
    _, seen = _steps(parts, [_data(32, seed=1)])
    assert len(seen) == 1 and scheduler.get_last_lr() == [0.05]  # the next finite step goes ahead


def test_the_stop_policy_raises_before_the_update(parts):
    accelerator, model, optimizer, scheduler = parts
    x, y = _data(8)
    x[0, 0] = float("inf")
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(NonFiniteError, match="the loss or gradient norm is not finite"):
        _steps(parts, [(x, y)], guard=NonFiniteGuard("stop"))
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_a_stop_request_is_seen_at_the_step(parts):
    grads, seen = _steps(parts, [_data(8)], guard=NonFiniteGuard("skip", stop_requested=lambda: True))
    assert grads.stop and grads.ok and len(seen) == 1  # the step itself still updates


@pytest.mark.parametrize("parts", [{"spare": True}], indirect=True)
def test_a_parameter_without_gradient_is_named_once(parts, capsys):
    _steps(parts, [_data(8), _data(8, seed=1)])
    out = capsys.readouterr().out
    assert out.count("2 parameter(s) received no gradient: spare.weight, spare.bias") == 1


def test_evaluate_counts_every_sample_and_matches_torch(parts):
    accelerator, model, _, _ = parts
    x, y = _data(50)
    loader = accelerator.prepare(torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16))
    result = evaluate(accelerator, model, Task("cross_entropy", ["accuracy"]).for_run(), loader)
    with torch.no_grad():
        logits = model(x)
    assert result["samples"] == 50
    assert result["loss"] == pytest.approx(float(nn.functional.cross_entropy(logits, y)), rel=1e-12)
    assert result["accuracy"] == float((logits.argmax(1) == y).double().mean())


def _fused_parts(accum: int = 1):
    accelerator, _ = make_accelerator(TrainConfig(grad_accum=accum, cpu=True, progress=False))
    model = _model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, fused=True)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    model, optimizer = accelerator.prepare(model, optimizer)
    return accelerator, model, optimizer, scheduler


def _deferred_window(parts, policy: str = "skip") -> GradientWindow:
    from accel_train.internals import skip_on_device

    guard = NonFiniteGuard(policy)
    guard.defer_to(skip_on_device(parts[2]))
    return GradientWindow(parts[0], parts[1], guard=guard)


def test_a_deferred_verdict_skips_on_the_device_and_holds_the_schedule():
    """Fused AdamW: the non-finite step's update is skipped by the optimizer itself (weights and state bitwise),
    and the schedule advances only once the step's verdict is read, before the next update."""
    parts = _fused_parts()
    accelerator, model, optimizer, scheduler = parts
    grads, task = _deferred_window(parts), Task("cross_entropy", []).for_run()
    train_step(accelerator, model, task, _data(8), optimizer, scheduler, grads)  # step 1: fine
    before = [p.detach().clone() for p in model.parameters()]
    state = {k: v.clone() for k, v in optimizer.optimizer.state[next(model.parameters())].items()}
    x, y = _data(8, seed=1)
    x[0, 0] = float("nan")
    train_step(accelerator, model, task, (x, y), optimizer, scheduler, grads)  # step 2: not finite
    assert grads.ok and scheduler.get_last_lr() == [0.05]  # step 1's verdict read at step 2: the schedule moved
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    after = optimizer.optimizer.state[next(model.parameters())]
    assert all(torch.equal(state[k], after[k]) for k in state)
    train_step(accelerator, model, task, _data(8, seed=2), optimizer, scheduler, grads)  # step 3 reads step 2's
    assert grads.guard.take_skipped() == [1] and scheduler.get_last_lr() == [0.05]  # skipped 1 step ago, LR held
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    grads.settle()
    assert scheduler.get_last_lr() == [0.025] and grads.guard.take_skipped() == []
    shutdown(accelerator)


def test_a_deferred_verdict_under_stop_raises_before_the_next_update():
    parts = _fused_parts()
    accelerator, model, optimizer, scheduler = parts
    grads, task = _deferred_window(parts, "stop"), Task("cross_entropy", []).for_run()
    x, y = _data(8)
    x[0, 0] = float("inf")
    train_step(accelerator, model, task, (x, y), optimizer, scheduler, grads)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(NonFiniteError, match="training stopped before this optimizer step"):
        train_step(accelerator, model, task, _data(8, seed=1), optimizer, scheduler, grads)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    shutdown(accelerator)


def test_no_host_read_in_a_step_with_a_fused_optimizer(monkeypatch):
    """20 steps of accumulation 2 with fused AdamW, the training meter updated as the loop does: the only values
    read back are each step's predecessor's verdicts, already copied to host memory (item, tolist, bool, float and
    int on a tensor counted). With foreach AdamW the verdict is one device read a step instead."""
    reads = []
    for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            reads.append((_name, id(self)))
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    from accel_train.metrics import Meter

    parts = _fused_parts(accum=2)
    grads, task = _deferred_window(parts), Task("cross_entropy", ["accuracy"]).for_run()
    meter = Meter(parts[0], task.make_metrics("train"))
    batches = [_data(8, seed=s) for s in range(42)]
    for batch in batches[:2]:  # the first step checks the labels once
        train_step(parts[0], parts[1], task, batch, parts[2], parts[3], grads)
    staged = [grads.guard.pending[0]]  # kept alive: their ids stay unique
    reads.clear()
    for batch in batches[2:]:
        out, loss, count = train_step(parts[0], parts[1], task, batch, parts[2], parts[3], grads)
        meter.update(out, loss, count, None)
        if grads.guard.pending is not None and grads.guard.pending[0] is not staged[-1]:
            staged.append(grads.guard.pending[0])
    assert len(staged) == 21 and len(reads) == 20  # 20 steps, each reading its predecessor's verdict once
    assert {name for name, _ in reads} == {"tolist"} and {i for _, i in reads} <= {id(t) for t in staged}
    shutdown(parts[0])
