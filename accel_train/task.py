"""The seam between data and model: a batch goes in, per-sample losses, predictions and targets come out.

One dispatch serves vision, language and multimodal models:

    (x, y)               -> model(x)                 loss(output, y)
    ((x1, x2, ...), y)   -> model(x1, x2, ...)       loss(output, y)
    {"input_ids": ...}   -> model(**batch)           the model's own `output.loss`, or loss(logits, batch["labels"])

Losses are returned per sample (the sample's summed loss units, and how many units: 1 per sample, or its target
tokens), so the loop can weight a short last batch, drop padding duplicates and normalise over an accumulation
window and all processes exactly.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .errors import UserError, closest
from .metrics import Confusion, MetricSet


def _per_sample(values: torch.Tensor) -> torch.Tensor:
    return values.flatten(1).mean(1) if values.dim() > 1 else values


def full_precision(values: torch.Tensor) -> torch.Tensor:
    """fp16/bf16 outputs of autocast are upcast for the loss; fp32 and fp64 stay as they are."""
    return values.float() if values.dtype in (torch.float16, torch.bfloat16) else values


class CrossEntropy:
    """Cross-entropy per sample from class logits `[n, C]` (or `[n, C, ...]`), against integer labels or class
    probabilities of the logits' shape (mixup), as `F.cross_entropy` computes it.

    With `weight` (one per class) each sample's loss is weighted and counts as its weight in units (its class's
    weight; for probabilities, their weighted sum): summed over an accumulation window and all processes and
    divided by their units, that is torch's weighted mean, `F.cross_entropy(weight=...)`.
    """

    def __init__(self, label_smoothing: float = 0.0, weight: torch.Tensor | None = None):
        self.label_smoothing, self.weight = label_smoothing, weight

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor):
        logits = full_precision(logits)
        if self.weight is not None and self.weight.device != logits.device:
            self.weight = self.weight.to(logits.device)  # moved once
        weight = self.weight
        try:
            losses = F.cross_entropy(logits, targets, weight=weight, reduction="none",
                                     label_smoothing=self.label_smoothing)
        except IndexError:  # CPU: "Target 12 is out of bounds"
            check_labels(targets, logits.shape[1])
            raise
        if weight is None:
            return _per_sample(losses)
        units = torch.movedim(targets, 1, -1) @ weight if targets.is_floating_point() else weight[targets]
        return _per_sample(losses), _per_sample(units)

    def check(self, num_classes: int) -> None:
        if self.weight is not None and len(self.weight) != num_classes:
            raise UserError(f"--class-weights gives {len(self.weight)} weights, but the model has {num_classes} "
                            f"outputs: give one weight per class, or --class-weights auto.")


_cross_entropy = CrossEntropy()


def _bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = full_precision(logits)
    return _per_sample(F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype), reduction="none"))


def _regression(fn: Callable) -> Callable:
    def loss(predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        predictions = full_precision(predictions).reshape(targets.shape)
        return _per_sample(fn(predictions, targets.to(predictions.dtype), reduction="none"))
    return loss


LOSSES: dict[str, Callable] = {
    "cross_entropy": _cross_entropy,  # class logits [n, C] (or [n, C, ...]) and integer targets
    "bce_with_logits": _bce,  # binary / multi-label logits and 0/1 targets of the same shape
    "mse": _regression(F.mse_loss),
    "l1": _regression(F.l1_loss),
    "smooth_l1": _regression(F.smooth_l1_loss),
}


@dataclass
class Output:
    """What one forward pass gives the loop."""

    losses: torch.Tensor  # [n]: each sample's loss, summed over its units
    counts: torch.Tensor | None  # [n]: loss units per sample (target tokens), or None for one unit per sample
    predictions: Any  # what the metrics read (logits)
    targets: Any  # what the metrics compare against

    def total(self, valid: int | None = None) -> tuple[torch.Tensor, torch.Tensor | int]:
        """(sum of losses, number of units) over the first `valid` samples (all when None)."""
        losses, counts = self.losses, self.counts
        if valid is not None:  # a slice is an op and an autograd node: only for a padded last batch
            losses, counts = losses[:valid], None if counts is None else counts[:valid]
        return losses.sum(), (len(losses) if counts is None else counts.sum())


def _shapes(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"{str(value.dtype).removeprefix('torch.')}{list(value.shape)}"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {_shapes(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (tuple, list)):
        return "(" + ", ".join(_shapes(v) for v in value) + ")"
    return type(value).__name__


def logits_of(output: Any) -> Any:
    """The tensor metrics read from a model's output: `.logits`, `["logits"]`, the first element, or itself."""
    if isinstance(output, torch.Tensor):
        return output
    if hasattr(output, "logits"):
        return output.logits
    if isinstance(output, Mapping) and "logits" in output:
        return output["logits"]
    if isinstance(output, (tuple, list)) and output:
        return output[0]
    return output


class Task:
    """Turns a batch into an `Output`; the only code that knows the batch's shape.

    Args:
        loss: a name (`cross_entropy`, `bce_with_logits`, `mse`, `l1`, `smooth_l1`), a callable
            `fn(output, targets)` returning a scalar, one value per sample, or (values, units) per sample (a
            weighted loss: the loop divides by the units), or None to use the model's own `output.loss` for dict
            batches.
        metrics: names, callables or `Metric` objects (see `accel_train.metrics`).
        class_names: names for per-class metrics and the run folder's per-class report.

    A cross-entropy task also records validation's confusion matrix (`task.confusion`, from the same gathered
    predictions as the metrics) for the run folder's per-class report.
    """

    def __init__(self, loss: str | Callable | None = "cross_entropy", metrics: Any = ("accuracy",),
                 class_names: Sequence[str] | None = None):
        if isinstance(loss, str):
            if loss not in LOSSES:
                raise UserError(f"unknown loss `{loss}`.{closest(loss, LOSSES)} Built-in losses: "
                                f"{', '.join(LOSSES)}; or pass a callable fn(output, targets).")
            loss = LOSSES[loss]
        self.loss_fn = loss
        self.metric_specs = metrics
        self.class_names = class_names
        self.confusion = Confusion(per_sample=True) if loss is _cross_entropy else None
        self.dataset_labels: torch.Tensor | None = None  # all training labels, when readable: checked at step 1
        self.checked = False  # the first batch has been checked

    def for_run(self, dataset_labels: torch.Tensor | None = None) -> Task:
        """A copy for one run, with fresh first-batch checks against `dataset_labels` (all training labels, when
        readable); `fit` trains with it and leaves the task it was given untouched."""
        task = copy.copy(self)
        task.dataset_labels, task.checked = dataset_labels, False
        task.confusion = None if self.confusion is None else Confusion(per_sample=True)
        return task

    def make_metrics(self, split: str = "eval") -> MetricSet:
        """Fresh metrics for `split` ("train" leaves out metrics marked `train = False`); validation's also feed
        `self.confusion`."""
        metrics = MetricSet(self.metric_specs, self.class_names, split=split)
        if split != "train" and self.confusion is not None:
            self.confusion.reset()
            metrics.metrics.append(self.confusion)
        return metrics

    def forward(self, model: torch.nn.Module, batch: Any) -> tuple[Any, Any]:
        """Call the model on the batch's inputs; return (model output, targets)."""
        if isinstance(batch, Mapping):
            if self.loss_fn is None:
                return model(**batch), batch.get("labels")
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            return model(**inputs), batch.get("labels")
        if isinstance(batch, (tuple, list)) and len(batch) == 2:
            inputs, targets = batch
            return (model(*inputs) if isinstance(inputs, (tuple, list)) else model(inputs)), targets
        raise UserError(f"a batch must be (inputs, targets), ((input1, input2, ...), targets) or a dict of model "
                        f"arguments; got {_shapes(batch)}.")

    def __call__(self, model: torch.nn.Module, batch: Any) -> Output:
        if not self.checked:
            return self._first_call(model, batch)
        output, targets = self.forward(model, batch)
        return self.losses(output, targets)

    def losses(self, output: Any, targets: Any) -> Output:
        logits = logits_of(output)
        if self.loss_fn is None:
            loss = getattr(output, "loss", None) if not isinstance(output, Mapping) else output.get("loss")
            if loss is None:
                raise UserError("the model returned no `loss` for this dict batch: include `labels` in the batch, "
                                "or give a loss (for example loss='cross_entropy').")
        else:
            loss = self.loss_fn(logits, targets)
        loss, counts = loss if isinstance(loss, tuple) else (loss, None)  # (losses, units per sample)
        n = len(targets) if targets is not None else len(logits)
        if loss.dim() == 0:
            loss = loss.expand(n)  # a batch mean counts as that value for every sample
        elif loss.shape != (n,):
            raise UserError(f"the loss must be a scalar or one value per sample (shape [{n}]), got shape "
                            f"{list(loss.shape)}. Reduce it with .mean() or per sample.")
        return Output(loss, counts, logits, targets)

    def _first_call(self, model: torch.nn.Module, batch: Any) -> Output:
        """The first batch: turn a model/batch mismatch or bad labels into a message with the shapes."""
        try:
            output, targets = self.forward(model, batch)
        except UserError:
            raise
        except (RuntimeError, TypeError, ValueError, IndexError) as error:
            if isinstance(error, torch.OutOfMemoryError):
                raise
            raise UserError(f"the model cannot take this batch {_shapes(batch)}: {type(error).__name__}: "
                            f"{error}. Check the model's input size against the data.") from None
        mistake = loss_mistake(self.loss_fn, logits_of(output), targets)
        if mistake:
            raise UserError(mistake)
        if isinstance(self.loss_fn, CrossEntropy) and isinstance(targets, torch.Tensor):
            classes = logits_of(output).shape[1]
            self.loss_fn.check(classes)
            if targets.shape != logits_of(output).shape:  # integer labels, not class probabilities (mixup)
                check_labels(targets, classes)
            if self.dataset_labels is not None:
                check_labels(self.dataset_labels, classes)
        result = self.losses(output, targets)
        self.checked = True
        return result


def loss_mistake(loss_fn: Callable | None, logits: Any, targets: Any) -> str | None:
    """What is wrong when a built-in loss cannot take the first batch's output and targets (checked once)."""
    name = ("cross_entropy" if isinstance(loss_fn, CrossEntropy)
            else next((key for key, fn in LOSSES.items() if fn is loss_fn), None))
    if name is None:
        return None
    if targets is None:
        return (f"the batch has no targets for loss={name}: a dict batch needs a `labels` entry (or pass loss=None "
                "and a model that returns its own `loss`).")
    if not isinstance(logits, torch.Tensor) or not isinstance(targets, torch.Tensor):
        return None
    shapes = f"output {_shapes(logits)}, targets {_shapes(targets)}"
    if name == "cross_entropy" and not targets.is_floating_point():
        if targets.dim() == 2 and targets.shape[1] == 1 and logits.dim() == 2:
            return (f"cross_entropy needs one class index per sample, shape [{len(targets)}], got targets "
                    f"{_shapes(targets)}. Use labels.squeeze(1) (or labels.view(-1)) in the dataset.")
        if logits.dim() != targets.dim() + 1 or logits.shape[:1] + logits.shape[2:] != targets.shape:
            return (f"cross_entropy takes class logits [n, classes] for targets [n] ({shapes}). Make the model "
                    "return one row of class scores per sample (for example remove the extra dimension with "
                    ".squeeze(1) or .flatten(1)).")
    if name in ("mse", "l1", "smooth_l1") and logits.numel() != targets.numel():
        return (f"{name} needs one prediction per target value ({shapes}). Give the model as many outputs as the "
                "targets have values (for example a final Linear(..., 1) for one target per sample).")
    return None


def check_labels(targets: torch.Tensor, num_classes: int) -> None:
    """Integer labels must lie in [0, num_classes) for cross-entropy; one host read, at the first batch."""
    if targets.is_floating_point():
        raise UserError(f"cross_entropy needs integer class labels, got {str(targets.dtype).removeprefix('torch.')}."
                        " Use loss='bce_with_logits' for 0/1 targets or loss='mse' for regression.")
    low, high = int(targets.min()), int(targets.max())
    if low < 0 or high >= num_classes:
        bad = low if low < 0 else high
        raise UserError(f"label {bad} is outside [0, {num_classes}): the model has {num_classes} outputs. "
                        f"Give the model one output per class, or map the labels to 0..{num_classes - 1}.")
