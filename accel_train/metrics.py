"""Metrics as on-device sums: updated every batch without a host sync, added across processes, read once.

Every metric keeps its state as tensors that add up across batches and processes (counts, sums, a confusion
matrix). Validation feeds them tensors from `gather_for_metrics`, so each sample counts once and every process
holds the same totals; training feeds them the local batch and adds the processes' totals at the epoch's end.
`compute()` is the only place that reads values back to the host.

Names: `accuracy`, `f1`, `precision`, `recall` (macro over classes, with per-class precision/recall), `mse`,
`mae`. The classification metrics take multiclass, binary, multi-label and soft targets (`accel_train.targets`
says which is which) and refuse other shapes with one line. A callable
`fn(predictions, targets) -> scalar tensor` is averaged over batches, weighted by batch size.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence

import torch

from .errors import UserError, closest
from .meter import Meter, add_up_processes  # noqa: F401  (their home was this module)
from .targets import as_classes, target_kind


class Metric:
    """Base: `update` adds to tensor state, `compute` turns it into `{name: float}`.

    Subclass it for metrics the names do not cover. `state()`/`load_state()` expose tensors that add up across
    processes (used for training metrics); a metric that cannot be added up, or is too costly to compute on
    training batches (retrieval over all embeddings), sets `train = False` and is computed on validation only.
    """

    train = True

    def reset(self) -> None:
        self._state: list[torch.Tensor] | None = None

    def state(self) -> list[torch.Tensor]:
        return self._state or []

    def load_state(self, state: list[torch.Tensor]) -> None:
        if state:
            self._state = list(state)

    def _add(self, *values: torch.Tensor) -> None:
        if self._state is None:
            self._state = [v.detach().clone() for v in values]
        else:
            for total, value in zip(self._state, values):
                total.add_(value.detach())


class Accuracy(Metric):
    """Top-1 accuracy for class logits `[n, C]` and integer targets `[n]`; binary logits `[n]`/`[n, 1]` count as
    class 1 above 0; soft targets (rows of class probabilities) are compared with their most likely class;
    multi-label 0/1 targets of the logits' shape give element-wise accuracy (see `accel_train.targets`)."""

    def __init__(self, name: str = "accuracy"):
        self.name = name
        self.kind: str | None = None  # decided at the first update (accel_train.targets)
        self.reset()

    def reset(self) -> None:
        self.correct: torch.Tensor | None = None
        self.total = 0  # known on the host from shapes: no device work

    def update(self, predictions: torch.Tensor, targets: torch.Tensor) -> None:
        if self.kind is None:
            self.kind = target_kind(predictions, targets, self.name)
        if self.kind == "multilabel":
            correct, count = ((predictions > 0) == (targets > 0.5)).sum(), targets.numel()
        else:
            predicted, true, _ = as_classes(predictions, targets, self.kind)
            correct, count = (predicted == true).sum(), true.numel()
        self.total += count
        self.correct = correct if self.correct is None else self.correct.add_(correct)

    def state(self) -> list[torch.Tensor]:
        if self.correct is None:
            return []
        return [self.correct, torch.tensor(self.total, device=self.correct.device)]

    def load_state(self, state: list[torch.Tensor]) -> None:
        if state:
            self.correct, self.total = state[0], int(state[1])

    def compute(self) -> dict[str, float]:
        if self.correct is None:
            return {}
        return {self.name: float(self.correct) / max(self.total, 1)}


class Confusion(Metric):
    """The confusion matrix `[true class, predicted class]` of single-label classification (multiclass, binary,
    soft targets), summed on the device; `compute()` gives no numbers, `matrix()` the counts.

    With `per_sample=True` (what a `Task` records for the run folder's per-class report) it records only one label
    per sample, up to `max_classes` classes, and switches itself off otherwise (token labels, multi-label)."""

    name = "confusion"
    train = False

    def __init__(self, per_sample: bool = False, max_classes: int = 1000):
        self.kind: str | None = None
        self.per_sample, self.max_classes = per_sample, max_classes
        self.reset()

    def update(self, predictions: torch.Tensor, targets: torch.Tensor) -> None:
        if self.kind is None:
            try:
                self.kind = target_kind(predictions, targets, self.name)
            except (UserError, AttributeError, TypeError):  # the run folder's recorder never fails a run
                if not self.per_sample:
                    raise
                self.kind = "off"
        if self.kind in ("multilabel", "off"):
            return
        predicted, true, classes = as_classes(predictions, targets, self.kind)
        if self.per_sample and (true.numel() != len(targets) or classes > self.max_classes):
            self.kind = "off"
            return
        valid = (true >= 0) & (true < classes)  # ignored positions (-100) count nowhere; no host sync
        index = torch.where(valid, true * classes + predicted, classes * classes)
        self._add(torch.bincount(index, minlength=classes * classes + 1)[:-1].reshape(classes, classes))

    def matrix(self) -> torch.Tensor | None:
        """Counts `[true, predicted]` on the CPU, or None before any single-label batch."""
        return None if self._state is None or len(self._state) != 1 else self._state[0].cpu()

    def compute(self) -> dict[str, float]:
        return {}


class ClassReport(Confusion):
    """Macro precision, recall and F1 from a confusion matrix (per-label counts for multi-label targets), plus
    per-class precision and recall.

    Classes that never occur and are never predicted are left out of the macro averages, as scikit-learn does
    with `labels` restricted to those present. Binary logits are two classes (0 and 1), averaged the same way.
    """

    train = True

    def __init__(self, names: Sequence[str] = ("f1", "precision", "recall"), class_names: Sequence[str] | None = None):
        self.names = tuple(names)
        self.name = "/".join(self.names)
        self.class_names = list(class_names) if class_names is not None else None
        super().__init__()

    def update(self, predictions: torch.Tensor, targets: torch.Tensor) -> None:
        if self.kind is None:
            self.kind = target_kind(predictions, targets, self.name)
        if self.kind != "multilabel":
            return super().update(predictions, targets)
        hit, truth = predictions > 0, targets > 0.5
        self._add((hit & truth).sum(0), hit.sum(0), truth.sum(0))  # per label: true positives, predicted, actual

    def compute(self) -> dict[str, float]:
        if self._state is None:
            return {}
        if len(self._state) == 1:
            confusion = self._state[0].double().cpu()
            true_pos, predicted, actual = confusion.diag(), confusion.sum(0), confusion.sum(1)
        else:
            true_pos, predicted, actual = (s.double().cpu() for s in self._state)
        precision = torch.where(predicted > 0, true_pos / predicted.clamp(min=1), torch.zeros_like(true_pos))
        recall = torch.where(actual > 0, true_pos / actual.clamp(min=1), torch.zeros_like(true_pos))
        f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-12),
                         torch.zeros_like(true_pos))
        present = (actual > 0) | (predicted > 0)
        out = {}
        for name, values in (("precision", precision), ("recall", recall), ("f1", f1)):
            if name in self.names:
                out[name] = float(values[present].mean()) if present.any() else 0.0
        names = self.class_names or [str(i) for i in range(len(true_pos))]
        for i, label in enumerate(names[: len(true_pos)]):
            if present[i]:
                out[f"precision/{label}"] = float(precision[i])
                out[f"recall/{label}"] = float(recall[i])
        return out


class MeanError(Metric):
    """Mean squared (`mse`) or absolute (`mae`) error over all elements."""

    def __init__(self, name: str):
        self.name = name
        self.reset()

    def update(self, predictions: torch.Tensor, targets: torch.Tensor) -> None:
        error = predictions.float().reshape(targets.shape) - targets.float()
        error = error.square() if self.name == "mse" else error.abs()
        self._add(error.sum(), torch.tensor(error.numel(), device=error.device))

    def compute(self) -> dict[str, float]:
        if self._state is None:
            return {}
        total, count = (float(t) for t in self._state)
        return {self.name: total / max(count, 1.0)}


class BatchMean(Metric):
    """A user's `fn(predictions, targets) -> scalar` averaged over batches, weighted by batch size."""

    def __init__(self, fn: Callable, name: str):
        self.fn, self.name = fn, name
        self.reset()

    def update(self, predictions, targets) -> None:
        value = torch.as_tensor(self.fn(predictions, targets)).float()
        n = len(targets)
        self._add(value.detach() * n, torch.tensor(float(n), device=value.device))

    def compute(self) -> dict[str, float]:
        if self._state is None:
            return {}
        total, count = (float(t) for t in self._state)
        return {self.name: total / max(count, 1.0)}


BUILTIN = ("accuracy", "f1", "precision", "recall", "mse", "mae")


class MetricSet:
    """The metrics of one split. Built from names, callables and Metric objects."""

    def __init__(self, metrics: Iterable | str | None = None, class_names: Sequence[str] | None = None,
                 split: str = "eval"):
        single = isinstance(metrics, (str, Metric)) or callable(metrics)
        specs = [metrics] if single else list(metrics or [])
        self.metrics: list[Metric] = []
        report = [s for s in specs if isinstance(s, str) and s in ("f1", "precision", "recall")]
        if report:
            self.metrics.append(ClassReport(report, class_names))
        for spec in specs:
            if isinstance(spec, Metric):
                if split != "train" or spec.train:
                    self.metrics.append(copy.deepcopy(spec))  # each split and run gets fresh state
            elif isinstance(spec, str) and spec in report:
                continue
            elif spec == "accuracy":
                self.metrics.append(Accuracy())
            elif spec in ("mse", "mae"):
                self.metrics.append(MeanError(spec))
            elif isinstance(spec, str):
                raise UserError(f"unknown metric `{spec}`.{closest(spec, BUILTIN)} Built-in metrics: "
                                f"{', '.join(BUILTIN)}; or pass a callable fn(predictions, targets).")
            elif callable(spec):
                self.metrics.append(BatchMean(spec, getattr(spec, "__name__", "metric")))
            else:
                raise UserError(f"a metric must be a name, a callable or a Metric, not {type(spec).__name__}.")

    def reset(self) -> None:
        for metric in self.metrics:
            metric.reset()

    def update(self, predictions, targets) -> None:
        for metric in self.metrics:
            metric.update(predictions, targets)

    def reduce(self, accelerator) -> None:
        """Add up every process's totals (training metrics are updated with the local batch only)."""
        for metric in self.metrics:
            state = metric.state()
            if state and accelerator.num_processes > 1:
                metric.load_state(accelerator.reduce(state, reduction="sum"))

    def compute(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for metric in self.metrics:
            out.update(metric.compute())
        return out
