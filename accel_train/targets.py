"""What a pair (predictions, targets) means for the classification metrics, decided once from shapes and values.

    multiclass   logits [n, C] (or [n, ..., C]), integer labels [n] (or [n, ...])
    binary       logits [n] or [n, 1], 0/1 targets [n] or [n, 1]: class 1 where the logit is > 0
    multilabel   logits [n, C], 0/1 targets [n, C]: each of the C labels is its own yes/no
    soft         logits [n, C], float targets [n, C] whose rows are class probabilities summing to 1 (mixup,
                 label smoothing, one-hot): compared by their most likely class, the argmax of the target row

Anything else is a `UserError` naming both shapes and what the metrics expect.
"""

from __future__ import annotations

import torch

from .errors import UserError

EXPECTED = ("class logits [n, C] with integer labels [n], binary logits [n] or [n, 1] with 0/1 targets, "
            "multi-label logits [n, C] with 0/1 targets [n, C], or soft targets [n, C] (rows of class "
            "probabilities summing to 1)")


def _shape(tensor: torch.Tensor) -> str:
    return f"{str(tensor.dtype).removeprefix('torch.')}{list(tensor.shape)}"


def target_kind(predictions: torch.Tensor, targets: torch.Tensor, metric: str) -> str:
    """One of multiclass, binary, multilabel, soft (see the module docstring). Reads the targets' values (a host
    sync) only when shapes alone cannot tell: call it once, not per batch."""
    p, t = tuple(predictions.shape), tuple(targets.shape)
    bad = UserError(f"{metric} cannot compare predictions {_shape(predictions)} with targets {_shape(targets)}: "
                    f"it expects {EXPECTED}.")
    if len(p) == len(t) + 1 and p[:-1] == t:
        if p[-1] == 1:
            return "binary"
        if targets.is_floating_point():
            raise bad
        return "multiclass"
    if p != t:
        raise bad
    if len(p) == 1 or p[-1] == 1:
        return "binary"
    if targets.is_floating_point() and len(t) == 2:
        sums = targets.sum(-1)
        if bool(((sums - 1).abs() < 1e-3).all()):
            return "soft"
    if bool(((targets == 0) | (targets == 1)).all()):
        return "multilabel"
    low, high = float(targets.min()), float(targets.max())
    raise UserError(f"{metric}: targets {_shape(targets)} with values in [{low:g}, {high:g}] are neither 0/1 labels "
                    f"(multi-label) nor rows of class probabilities summing to 1 (soft targets); it expects "
                    f"{EXPECTED}.")


def as_classes(predictions: torch.Tensor, targets: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(predicted class, true class, number of classes) for the single-label kinds (not multilabel)."""
    if kind == "binary":
        return (predictions.reshape(targets.shape) > 0).long().flatten(), (targets > 0.5).long().flatten(), 2
    if kind == "soft":
        return predictions.argmax(-1), targets.argmax(-1), predictions.shape[-1]
    predicted, true = predictions.argmax(-1), targets if targets.dtype == torch.long else targets.long()
    if true.dim() != 1:  # [n, L] token targets; a batch of [n] needs no flatten (an op per call)
        predicted, true = predicted.flatten(), true.flatten()
    return predicted, true, predictions.shape[-1]
