"""Checks made before the run folder is written, for mistakes that would otherwise surface only after an epoch."""

from __future__ import annotations

from .errors import UserError, closest
from .metrics import Accuracy, BatchMean, ClassReport, Confusion, MeanError, MetricSet


def metric_names(metrics: MetricSet) -> set[str] | None:
    """The names `metrics.compute()` will return, with the loss; None when a custom metric makes them unknown."""
    names = {"loss", "samples"}
    for metric in metrics.metrics:
        if isinstance(metric, ClassReport):
            names.update(metric.names)
        elif type(metric) is Confusion:  # the run folder's confusion matrix: no numbers
            continue
        elif type(metric) in (Accuracy, MeanError, BatchMean):
            names.add(metric.name)
        else:
            return None
    return names


def check_monitor(name: str, task, validated: bool) -> None:
    """--monitor must name a metric of the split that picks the best epoch (validation, else training)."""
    metrics, split = (task.make_metrics("eval"), "validation") if validated else (task.make_metrics("train"), "training")
    names = metric_names(metrics)
    if names is None or name in names or ("/" in name and any(isinstance(m, ClassReport) for m in metrics.metrics)):
        return
    raise UserError(f"--monitor {name} is not among the {split} metrics ({', '.join(sorted(names))})."
                    f"{closest(name, names)} Set --monitor to one of them.")
