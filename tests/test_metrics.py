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
