"""Metrics as on-device sums: updated every batch without a host sync, added across processes, read once.

Every metric keeps its state as tensors that add up across batches and processes (counts, sums, a confusion
matrix). Validation feeds them tensors from `gather_for_metrics`, so each sample counts once and every process
holds the same totals; training feeds them the local batch and adds the processes' totals at the epoch's end.
`compute()` is the only place that reads values back to the host.

Names: `accuracy` (multiclass from logits, or binary/multi-label from logits of the targets' shape), `f1`,
`precision`, `recall` (macro over classes, with per-class precision/recall), `mse`, `mae`. A callable
`fn(predictions, targets) -> scalar tensor` is averaged over batches, weighted by batch size.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence

import torch

from .errors import UserError, closest


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
    """Top-1 accuracy for class logits `[n, C]` and integer targets `[n]`; element-wise accuracy of
    thresholded logits (> 0) for binary or multi-label targets of the logits' own shape."""

    def __init__(self, name: str = "accuracy"):
        self.name = name
        self.reset()

    def reset(self) -> None:
        self.correct: torch.Tensor | None = None
        self.total = 0  # known on the host from shapes: no device work

    def update(self, predictions: torch.Tensor, targets: torch.Tensor) -> None:
        if predictions.dim() == targets.dim() + 1:
            correct = (predictions.argmax(dim=-1) == targets).sum()
        else:
            correct = ((predictions > 0) == (targets > 0.5)).sum()
        self.total += targets.numel()
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


class ClassReport(Metric):
    """Macro precision, recall and F1 from a confusion matrix, plus per-class precision and recall.

    Classes that never occur and are never predicted are left out of the macro averages, as scikit-learn does
    with `labels` restricted to those present.
    """

    def __init__(self, names: Sequence[str] = ("f1", "precision", "recall"), class_names: Sequence[str] | None = None):
        self.names = tuple(names)
        self.class_names = list(class_names) if class_names is not None else None
        self.reset()

    def update(self, predictions: torch.Tensor, targets: torch.Tensor) -> None:
        classes = predictions.shape[-1]
        index = targets.long() * classes + predictions.argmax(dim=-1)
        self._add(torch.bincount(index.flatten(), minlength=classes * classes).reshape(classes, classes))

    def compute(self) -> dict[str, float]:
        if self._state is None:
            return {}
        confusion = self._state[0].double().cpu()
        true_pos = confusion.diag()
        predicted, actual = confusion.sum(0), confusion.sum(1)
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


class Meter:
    """Training loss, loss units, samples and metrics of one epoch, summed on the device; read at log time."""

    def __init__(self, accelerator, metrics: MetricSet):
        self.accelerator, self.metrics = accelerator, metrics
        self.reset()

    def reset(self) -> None:
        self.loss = torch.zeros((), device=self.accelerator.device, dtype=torch.float64)
        self.units: torch.Tensor | int = 0
        self.samples = 0
        self.logged = (0.0, 0.0)  # (loss, units) over all processes at the last interval_loss()
        self.metrics.reset()

    def update(self, out, loss: torch.Tensor, count, valid: int | None) -> None:
        self.loss.add_(loss.detach())
        self.units = self.units + count
        self.samples += len(out.losses) if valid is None else valid
        if self.metrics.metrics:  # detached: the metric arithmetic records no graph
            self.metrics.update(out.predictions[:valid].detach(), out.targets[:valid])

    def totals(self) -> list[float]:
        """(loss, units, samples) summed over processes: one host read."""
        totals = torch.stack([self.loss, torch.as_tensor(self.units, device=self.loss.device).double(),
                              torch.tensor(float(self.samples), device=self.loss.device, dtype=torch.float64)])
        if self.accelerator.num_processes > 1:
            totals = self.accelerator.reduce(totals, reduction="sum")
        return totals.tolist()

    def interval_loss(self, totals: list[float] | None = None) -> float:
        """Mean loss per unit since the previous call, over all processes (from `totals()`, when given)."""
        loss, units, _ = totals or self.totals()
        (last_loss, last_units), self.logged = self.logged, (loss, units)
        return (loss - last_loss) / max(units - last_units, 1.0)

    def compute(self) -> tuple[dict[str, float], int]:
        """The epoch's loss and metrics, and its sample count, over all processes."""
        loss, units, samples = self.totals()
        self.metrics.reduce(self.accelerator)
        return {"loss": loss / max(units, 1.0), **self.metrics.compute()}, int(samples)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """This process's sums, to resume an epoch where it stopped."""
        state = {"loss": self.loss, "units": torch.as_tensor(self.units, dtype=torch.float64),
                 "units_on_host": torch.tensor(not isinstance(self.units, torch.Tensor)),
                 "samples": torch.tensor(self.samples), "logged": torch.tensor(self.logged, dtype=torch.float64)}
        for i, metric in enumerate(self.metrics.metrics):
            for j, tensor in enumerate(metric.state()):
                state[f"metric{i}.{j}"] = tensor
        return {k: v.detach().cpu().contiguous() for k, v in state.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        device = self.loss.device
        self.loss = state["loss"].to(device)
        self.units = int(state["units"]) if bool(state["units_on_host"]) else state["units"].to(device)
        self.samples, self.logged = int(state["samples"]), tuple(state["logged"].tolist())
        for i, metric in enumerate(self.metrics.metrics):
            parts = [state[k].to(device) for k in sorted((k for k in state if k.startswith(f"metric{i}.")),
                                                         key=lambda k: int(k.split(".")[1]))]
            if parts:
                metric.load_state(parts)


def add_up_processes(metrics: MetricSet, *totals: torch.Tensor | float) -> list:
    """Add `totals` and the metrics' state over all processes, including processes that saw no batch (and so
    hold no metric state): one object gather, for evaluation on shards of different sizes."""
    from accelerate.utils import gather_object

    mine = [[torch.as_tensor(t).detach().cpu() for t in totals],
            [[s.detach().cpu() for s in metric.state()] for metric in metrics.metrics]]
    parts = gather_object([mine])
    summed = [sum(part[0][i] for part in parts) for i in range(len(totals))]
    for i, metric in enumerate(metrics.metrics):
        states = [part[1][i] for part in parts if part[1][i]]
        if states:
            device = next((s.device for s in metric.state()), "cpu")
            metric.load_state([sum(column).to(device) for column in zip(*states)])
    return [s.to(t.device) if isinstance(t, torch.Tensor) else type(t)(s) for s, t in zip(summed, totals)]

