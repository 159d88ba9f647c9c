"""Metrics against scikit-learn's, on random predictions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn import metrics as sk

from accel_train import MetricSet, UserError


def _feed(metric_set: MetricSet, logits: torch.Tensor, targets: torch.Tensor, chunks: int = 5) -> dict:
    for p, t in zip(logits.chunk(chunks), targets.chunk(chunks)):
        metric_set.update(p, t)
    return metric_set.compute()


def test_classification_metrics_match_sklearn():
    gen = torch.Generator().manual_seed(0)
    logits, targets = torch.randn(503, 6, generator=gen), torch.randint(0, 5, (503,), generator=gen)  # class 5 absent
    got = _feed(MetricSet(["accuracy", "f1", "precision", "recall"], class_names=list("abcdef")), logits, targets)
    pred = logits.argmax(1).numpy()
    y = targets.numpy()
    labels = np.union1d(y, pred)
    assert got["accuracy"] == pytest.approx(sk.accuracy_score(y, pred))
    assert got["f1"] == pytest.approx(sk.f1_score(y, pred, average="macro", labels=labels, zero_division=0))
    assert got["precision"] == pytest.approx(sk.precision_score(y, pred, average="macro", labels=labels,
                                                                zero_division=0))
    assert got["recall"] == pytest.approx(sk.recall_score(y, pred, average="macro", labels=labels, zero_division=0))
    per_p = sk.precision_score(y, pred, average=None, labels=labels, zero_division=0)
    per_r = sk.recall_score(y, pred, average=None, labels=labels, zero_division=0)
    for i, label in enumerate(labels):
        assert got[f"precision/{'abcdef'[label]}"] == pytest.approx(per_p[i])
        assert got[f"recall/{'abcdef'[label]}"] == pytest.approx(per_r[i])


def test_multilabel_and_regression():
    gen = torch.Generator().manual_seed(1)
    logits, targets = torch.randn(100, 4, generator=gen), (torch.rand(100, 4, generator=gen) > 0.5).float()
    got = _feed(MetricSet("accuracy"), logits, targets)
    assert got["accuracy"] == pytest.approx(((logits > 0).float() == targets).float().mean().item())
    pred, y = torch.randn(100, generator=gen), torch.randn(100, generator=gen)
    got = _feed(MetricSet(["mse", "mae"]), pred.unsqueeze(1), y)
    assert got["mse"] == pytest.approx(sk.mean_squared_error(y, pred), rel=1e-5)
    assert got["mae"] == pytest.approx(sk.mean_absolute_error(y, pred), rel=1e-5)


def test_callable_metric_is_batch_weighted():
    def top2(logits, targets):
        return (logits.topk(2, dim=1).indices == targets[:, None]).any(1).float().mean()

    gen = torch.Generator().manual_seed(2)
    logits, targets = torch.randn(70, 5, generator=gen), torch.randint(0, 5, (70,), generator=gen)
    got = _feed(MetricSet([top2]), logits, targets, chunks=3)  # uneven chunks: 24, 24, 22
    assert got["top2"] == pytest.approx(top2(logits, targets).item())


def test_reset_and_unknown_name():
    metric_set = MetricSet("accuracy")
    metric_set.update(torch.tensor([[1.0, 0.0]]), torch.tensor([0]))
    metric_set.reset()
    assert metric_set.compute() == {}
    with pytest.raises(UserError, match="Did you mean `accuracy`"):
        MetricSet(["acuracy"])


def test_binary_logits_n_by_1_match_sklearn():
    """Binary logits [n, 1] (or [n]) with 0/1 targets: class 1 where the logit is > 0; f1 is macro over 0 and 1."""
    gen = torch.Generator().manual_seed(3)
    logits, targets = torch.randn(301, 1, generator=gen), torch.randint(0, 2, (301,), generator=gen)
    pred, y = (logits[:, 0] > 0).long().numpy(), targets.numpy()
    for t in (targets, targets.float().unsqueeze(1)):  # integer [n] and float [n, 1] targets
        got = _feed(MetricSet(["accuracy", "f1", "precision", "recall"]), logits, t)
        assert got["accuracy"] == pytest.approx(sk.accuracy_score(y, pred))
        assert got["f1"] == pytest.approx(sk.f1_score(y, pred, average="macro"))
        assert got["recall/1"] == pytest.approx(sk.recall_score(y, pred))  # the positive class
    assert 0.3 < got["accuracy"] < 0.7


def test_multilabel_f1_matches_sklearn():
    gen = torch.Generator().manual_seed(4)
    logits, targets = torch.randn(200, 5, generator=gen), (torch.rand(200, 5, generator=gen) > 0.6).long()
    got = _feed(MetricSet(["f1", "precision", "recall"]), logits, targets)
    pred, y = (logits > 0).long().numpy(), targets.numpy()
    for name, fn in (("f1", sk.f1_score), ("precision", sk.precision_score), ("recall", sk.recall_score)):
        assert got[name] == pytest.approx(fn(y, pred, average="macro", zero_division=0)), name
    assert got["precision/2"] == pytest.approx(sk.precision_score(y[:, 2], pred[:, 2]))


def test_soft_targets_compare_the_most_likely_class():
    """Mixup-style soft targets: accuracy is agreement of the argmaxes (here 1 of 16 = 0.0625), not the element-wise
    thresholded match (which gives 0.53 on these numbers)."""
    classes = torch.arange(16) % 4
    soft = torch.full((16, 4), 0.1)
    soft[torch.arange(16), classes] = 0.7  # rows sum to 1, most likely class = `classes`
    logits = torch.zeros(16, 4)
    logits[torch.arange(16), (classes + 1) % 4] = 1.0  # every prediction wrong ...
    logits[0] = 0.0
    logits[0, classes[0]] = 1.0  # ... but the first
    got = _feed(MetricSet(["accuracy", "f1"]), logits, soft, chunks=4)
    assert got["accuracy"] == 0.0625
    assert ((logits > 0) == (soft > 0.5)).float().mean().item() == 0.53125  # what element-wise reading would say
    assert got["f1"] == pytest.approx(sk.f1_score(classes, logits.argmax(1), average="macro", zero_division=0))


@pytest.mark.parametrize("logits, targets, first", [
    (torch.randn(8, 3), torch.randint(0, 3, (8, 2)),
     "accuracy cannot compare predictions float32[8, 3] with targets int64[8, 2]: it expects class logits"),
    (torch.randn(8, 3), torch.rand(8, 3) * 5,
     "accuracy: targets float32[8, 3] with values in ["),
    (torch.randn(8, 3), torch.rand(8),
     "accuracy cannot compare predictions float32[8, 3] with targets float32[8]: it expects class logits"),
])
def test_targets_a_metric_cannot_read_are_one_line(logits, targets, first):
    for names in (["accuracy"], ["f1"]):
        with pytest.raises(UserError) as error:
            MetricSet(names).update(logits, targets)
        message = str(error.value)
        assert "\n" not in message and message.startswith(first.replace("accuracy", names[0]))
