"""The checks of `accel-train diagnose`, each turning one look at a batch, the model or the schedule into findings.

Thresholds (the verdicts' rules, in one place):
    inputs      fail: NaN or inf; warn: a float input beyond +-255 (unnormalised?) or constant
    labels      fail: cross-entropy labels outside [0, outputs) or not integers
    initial     cross-entropy of an untrained classifier (or language model) should be near ln C: warn beyond
                1.5x (or below 0.5x), fail beyond 2x
    gradients   per weight tensor: fail: NaN/inf, a norm above 1e3 (exploding) or below 1e-6 of the largest
                (vanishing); warn: below 1e-4 of the largest, or exactly zero
    parameters  fail: trainable tensors that get no gradient, none trainable, or trainable ones the optimizer
                lacks; warn: some frozen
    schedule    fail: LR 0 over all of the first steps; warn: the warm-up outlasts the run
    overfit     ok: one small batch memorised (loss down to 20% of its start, or every sample right); warn: down
                by 10% or more; fail: less
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from .task import _cross_entropy, _shapes, logits_of

EXPLODING, VANISHING_FAIL, VANISHING_WARN = 1e3, 1e-6, 1e-4


@dataclass
class Finding:
    """One check's verdict (`ok`, `warn` or `fail`) and what it saw."""

    check: str
    verdict: str
    detail: str


def tensors(value: Any, name: str = "input") -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of every tensor in a nested batch structure."""
    if isinstance(value, torch.Tensor):
        yield name, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from tensors(item, str(key))
    elif isinstance(value, (tuple, list)):
        for i, item in enumerate(value):
            yield from tensors(item, f"{name}[{i}]" if len(value) > 1 else name)


def split_batch(batch: Any) -> tuple[Any, Any]:
    """(inputs, targets) of a batch in any of the three shapes."""
    if isinstance(batch, Mapping):
        return {k: v for k, v in batch.items() if k != "labels"}, batch.get("labels")
    return batch[0], batch[1]


def check_inputs(batch: Any) -> Finding:
    inputs, _ = split_batch(batch)
    parts, verdict, advice = [], "ok", []
    for name, tensor in tensors(inputs):
        text = f"{name} {_shapes(tensor)}"
        if tensor.is_floating_point() or tensor.is_complex():
            values = tensor.detach().float()
            bad = int((~torch.isfinite(values)).sum())
            finite = values[torch.isfinite(values)]
            if finite.numel():
                text += f" in [{float(finite.min()):.3g}, {float(finite.max()):.3g}], mean {float(finite.mean()):.3g}"
            if bad:
                verdict = "fail"
                text += f", {bad} NaN/inf"
            elif finite.numel() and verdict == "ok" and (finite.abs().max() > 255 or finite.std() == 0):
                verdict = "warn"
                advice.append(f"{name}: values beyond +-255 or constant: normalise the inputs")
        elif tensor.numel():
            text += f" in [{int(tensor.min())}, {int(tensor.max())}]"
        parts.append(text)
    return Finding("inputs", verdict, "; ".join(parts + advice) or "no tensor in the batch inputs")


def check_labels(targets: Any, logits: Any, loss_fn, dataset_labels: torch.Tensor | None) -> Finding:
    if not isinstance(targets, torch.Tensor):
        return Finding("labels", "ok", f"targets {_shapes(targets)}")
    text = f"{_shapes(targets)}"
    if targets.numel() and not targets.is_floating_point():
        text += f" in [{int(targets.min())}, {int(targets.max())}]"
    if loss_fn is not _cross_entropy or not isinstance(logits, torch.Tensor) or logits.dim() < 2:
        return Finding("labels", "ok", text)
    classes = logits.shape[1]
    if targets.is_floating_point():
        return Finding("labels", "fail", f"{text}: cross_entropy needs integer class labels")
    every = dataset_labels if dataset_labels is not None else targets
    low, high = int(every.min()), int(every.max())
    scope = "all training labels" if dataset_labels is not None else "the batch's labels"
    if low < 0 or high >= classes:
        return Finding("labels", "fail", f"{text}; {scope} span [{low}, {high}] but the model has {classes} outputs: "
                                         f"labels must lie in [0, {classes})")
    return Finding("labels", "ok", f"{text}; {scope} within the model's {classes} outputs")


def _classes(logits: Any, targets: Any, loss_fn) -> int | None:
    """C, when the loss is a cross-entropy over C classes: class logits [n, C] with the cross_entropy loss, or
    logits [..., C] against integer targets [...] (a language model's tokens)."""
    if not isinstance(logits, torch.Tensor) or logits.dim() < 2:
        return None
    if loss_fn is _cross_entropy:
        return logits.shape[1]
    integer = isinstance(targets, torch.Tensor) and not targets.is_floating_point()
    return logits.shape[-1] if loss_fn is None and integer and tuple(targets.shape) == logits.shape[:-1] else None


def check_initial_loss(loss: float, logits: Any, targets: Any, loss_fn) -> Finding:
    if not math.isfinite(loss):
        return Finding("initial loss", "fail", f"{loss}: the first loss is not finite")
    classes = _classes(logits, targets, loss_fn)
    if classes is None:
        return Finding("initial loss", "ok", f"{loss:.4g} (no reference value for this loss)")
    expected = math.log(classes)
    ratio = loss / expected
    text = f"{loss:.4g}; an untrained {classes}-class classifier gives about ln {classes} = {expected:.4g}"
    if ratio > 2:
        return Finding("initial loss", "fail", f"{text} ({ratio:.1f}x): the logits start far too large or the "
                                               "labels do not match the outputs; scale down the last layer's init")
    if ratio > 1.5 or ratio < 0.5:
        return Finding("initial loss", "warn", f"{text} ({ratio:.2f}x): check the last layer's initialisation")
    return Finding("initial loss", "ok", text)


def layer_norms(model: torch.nn.Module) -> dict[str, float]:
    """The gradient norm of each weight (tensors of 2 or more dimensions: biases and norm scales are left out,
    a bias before batch norm gets no gradient by design) that received a gradient."""
    graded = [(name, p) for name, p in model.named_parameters() if p.grad is not None]
    weights = [(name, p) for name, p in graded if p.dim() > 1] or graded
    return {name: float(p.grad.detach().float().norm()) for name, p in weights}


def check_gradients(norms: dict[str, float]) -> Finding:
    if not norms:
        return Finding("gradients", "fail", "no parameter received a gradient: is the output detached from the model?")
    bad = [n for n, v in norms.items() if not math.isfinite(v)]
    total = math.sqrt(sum(v * v for v in norms.values() if math.isfinite(v)))
    top = max(v for v in norms.values() if math.isfinite(v)) if len(bad) < len(norms) else 0.0
    low_name = min(norms, key=lambda n: norms[n] if math.isfinite(norms[n]) else math.inf)
    text = (f"total norm {total:.3g}; largest {max(norms, key=lambda n: norms[n]):s} {top:.3g}, "
            f"smallest {low_name} {norms[low_name]:.3g}")
    if bad:
        return Finding("gradients", "fail", f"{text}; NaN/inf gradients in {', '.join(bad[:5])}")
    exploding = [n for n, v in norms.items() if v > EXPLODING]
    if exploding:
        return Finding("gradients", "fail", f"{text}; exploding (norm > {EXPLODING:g}): {', '.join(exploding[:5])}")
    for limit, verdict in ((VANISHING_FAIL, "fail"), (VANISHING_WARN, "warn")):
        vanishing = [n for n, v in norms.items() if 0 < v < limit * top]
        if vanishing:
            return Finding("gradients", verdict, f"{text}; vanishing (norm < {limit:g} x the largest): "
                                                 f"{', '.join(vanishing[:5])}")
    zero = [n for n, v in norms.items() if v == 0]
    if zero:
        return Finding("gradients", "warn", f"{text}; exactly zero gradient: {', '.join(zero[:5])}")
    return Finding("gradients", "ok", text)


def check_parameters(model: torch.nn.Module, held: set[str] | None) -> Finding:
    """Run after one backward: trainable tensors without a gradient, frozen ones, and those missing from the
    optimizer (`held`: the names it holds; None when the run builds its own)."""
    named = list(model.named_parameters())
    frozen = [n for n, p in named if not p.requires_grad]
    unused = [n for n, p in named if p.requires_grad and p.grad is None]
    count = f"{len(named) - len(frozen)} of {len(named)} tensors trainable"
    if len(frozen) == len(named):
        return Finding("parameters", "fail", f"{count}: every parameter is frozen (requires_grad=False)")
    if unused:
        return Finding("parameters", "fail", f"{count}; no gradient reaches {', '.join(unused[:5])}"
                                             f"{' ...' if len(unused) > 5 else ''}: not used in forward, or detached")
    missing = [n for n, p in named if p.requires_grad and held is not None and n not in held]
    if missing:
        return Finding("parameters", "fail", f"{count}; the optimizer does not hold {', '.join(missing[:5])}: "
                                             "they would never be updated")
    if frozen:
        return Finding("parameters", "warn", f"{count}; frozen: {', '.join(frozen[:5])}"
                                             f"{' ...' if len(frozen) > 5 else ''} (intended?)")
    return Finding("parameters", "ok", count)


def check_outputs(output: Any, targets: Any, losses: torch.Tensor | None, error: str | None) -> Finding:
    logits = logits_of(output)
    shown = f"output {_shapes(logits)}, targets {_shapes(targets)}"
    if error is not None:
        return Finding("output vs loss", "fail", f"{shown}: {error}")
    return Finding("output vs loss", "ok", f"{shown} -> per-sample losses {_shapes(losses)}")
