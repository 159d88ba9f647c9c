"""The training recipes, all off by default: label smoothing and class weights for cross-entropy, mixup and
CutMix of training batches, the EMA of the weights (`accel_train.ema`) and layer-wise LR decay
(`accel_train.layer_decay`). `for_run` checks that each one asked for applies to this model and task (before the
run folder is made) and returns the run's task, its EMA and the plan's lines.

Class weights keep the loss torch's weighted mean: each sample's loss is weighted and counts as its weight in loss
units (`task.CrossEntropy`), and the loop divides a window's summed losses by its units over all processes.
Mixup and CutMix are torchvision's `transforms.v2.MixUp`/`CutMix`, applied to training batches only (the model in
train mode, as in the loop and the LR finder; validation sees the data as it is); the loss takes the mixed class
probabilities, and training accuracy counts a mixed image as right when the model picks its dominant label.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from .config import TrainConfig
from .ema import EMA, NoEMA
from .errors import UserError
from .task import CrossEntropy, Task


def num_classes(model: torch.nn.Module, labels: torch.Tensor | None) -> int | None:
    """The model's number of classes: its `num_classes`, a Hugging Face config's `num_labels`, else the training
    labels' largest value + 1; None when none of them is known."""
    for owner in (model, getattr(model, "config", None)):
        for name in ("num_classes", "num_labels"):
            value = getattr(owner, name, None)
            if isinstance(value, int) and value > 0:
                return value
    return int(labels.max()) + 1 if labels is not None and len(labels) else None


def class_weights(spec: str | list[float], labels: torch.Tensor | None, classes: int | None) -> torch.Tensor:
    """One weight per class: `auto` gives scikit-learn's "balanced" N / (classes x n_c) from the training labels
    (0 for a class that never occurs), otherwise the given numbers. Scaled so that the smallest positive weight
    is 1: the weighted mean does not change, and no window of real samples holds less than one loss unit (the
    loop reads fewer as an empty window)."""
    if spec == "auto":
        if labels is None or classes is None:
            raise UserError("--class-weights auto needs the training labels (a TensorDataset, or a dataset with "
                            "`.targets`): give the weights instead, --class-weights 1,2.5,...")
        counts = torch.bincount(labels.flatten().long(), minlength=classes).double()
        weights = torch.where(counts > 0, counts.sum() / (classes * counts.clamp(min=1)), torch.zeros_like(counts))
    else:
        try:
            weights = torch.tensor([float(w) for w in (spec.split(",") if isinstance(spec, str) else spec)],
                                   dtype=torch.float64)
        except ValueError:
            raise UserError(f"--class-weights must be `auto` or numbers like 1,2.5,1 (got {spec!r}).") from None
    if (weights < 0).any() or not (weights > 0).any() or not torch.isfinite(weights).all():
        raise UserError(f"--class-weights must be finite, not negative, and not all 0 (got {spec!r}).")
    return (weights / weights[weights > 0].min()).float()


def build_mix(cfg: TrainConfig, classes: int | None):
    """torchvision's MixUp and/or CutMix (one of them at random when both are on), applied with `mix_prob`."""
    if not (cfg.mixup_alpha or cfg.cutmix_alpha):
        return None
    if classes is None:
        raise UserError("mixup and CutMix need the number of classes: give the model a `num_classes` attribute.")
    try:
        from torchvision.transforms import v2
    except ImportError:
        raise UserError("mixup and CutMix are torchvision's: pip install torchvision.") from None

    mixes = ([v2.MixUp(alpha=cfg.mixup_alpha, num_classes=classes)] if cfg.mixup_alpha else []) + (
        [v2.CutMix(alpha=cfg.cutmix_alpha, num_classes=classes)] if cfg.cutmix_alpha else [])
    return v2.RandomApply([mixes[0] if len(mixes) == 1 else v2.RandomChoice(mixes)], p=cfg.mix_prob)


class MixingTask:
    """The run's task with `mix(images, labels) -> (images, class probabilities)` applied to training batches
    (the model in train mode); everything else is the wrapped task's."""

    def __init__(self, task: Task, mix: Callable):
        self.task, self.mix = task, mix

    def __getattr__(self, name: str) -> Any:
        if name in ("task", "mix"):  # not set yet (copy, pickle): no recursion
            raise AttributeError(name)
        return getattr(self.task, name)

    def __call__(self, model: torch.nn.Module, batch: Any):
        if not model.training:
            return self.task(model, batch)
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2 and isinstance(batch[0], torch.Tensor)
                and batch[0].dim() == 4 and isinstance(batch[1], torch.Tensor) and batch[1].dim() == 1):
            raise UserError("mixup and CutMix mix image batches (images [n, C, H, W], integer labels [n]); this "
                            "job's batches are not: drop --mixup-alpha and --cutmix-alpha.")
        images, targets = self.mix(*batch)
        out = self.task(model, (images, targets))
        if targets.is_floating_point():  # mixed: metrics compare with each image's dominant label
            out.targets = targets.argmax(-1)
        return out


@dataclass
class Recipes:
    """What `fit` trains with: the task (loss options, mixing), the EMA (a no-op when off), the plan's lines."""

    task: Any
    ema: EMA | NoEMA
    lines: list[str] = field(default_factory=list)


def _loss(cfg: TrainConfig, task: Task, classes: int | None, lines: list[str]) -> None:
    """Label smoothing and class weights: a new cross-entropy for the run's copy of the task."""
    if not (cfg.label_smoothing or cfg.class_weights is not None):
        return
    if not isinstance(task.loss_fn, CrossEntropy):
        raise UserError("--label-smoothing and --class-weights apply to the cross_entropy loss; this task's loss "
                        "is another one. Drop them, or train with loss='cross_entropy'.")
    weight = None if cfg.class_weights is None else class_weights(cfg.class_weights, task.dataset_labels, classes)
    task.loss_fn = CrossEntropy(cfg.label_smoothing, weight)
    if cfg.label_smoothing:
        lines.append(f"label smoothing {cfg.label_smoothing}")
    if weight is not None:
        lines.append(f"class weights {cfg.class_weights if isinstance(cfg.class_weights, str) else 'given'}: "
                     + ", ".join(f"{w:.3g}" for w in weight.tolist()) + " (loss: their weighted mean)")


def _ema(cfg: TrainConfig, ema: EMA | None, lines: list[str]) -> EMA | NoEMA:
    if ema is not None and cfg.ema_decay is not None:
        raise UserError("give the EMA once: fit(ema=EMA(...)) or --ema-decay, not both.")
    if ema is None and cfg.ema_decay is not None:
        ema = EMA(cfg.ema_decay, warmup=cfg.ema_warmup, evaluate=cfg.eval_ema)
    if ema is None:
        if cfg.eval_ema:
            raise UserError("--eval-ema needs an EMA of the weights: set --ema-decay, for example 0.999.")
        return NoEMA()
    ema.evaluate = ema.evaluate or cfg.eval_ema
    lines.append(ema.describe())
    return ema


def for_run(cfg: TrainConfig, task: Task, model: torch.nn.Module, optimizer=None, ema: EMA | None = None,
            mix: Callable | None = None) -> Recipes:
    """Check the recipes `cfg` asks for (and fit's `ema` and `mix` objects) against this model and task; return the
    run's task (a copy already: see `Task.for_run`), EMA and plan lines. Raises UserError where one cannot apply."""
    lines: list[str] = []
    classes = num_classes(model, task.dataset_labels)
    _loss(cfg, task, classes, lines)
    if cfg.layer_lr_decay is not None:
        if optimizer is not None:
            raise UserError("--layer-lr-decay builds the optimizer's groups: it cannot apply to an optimizer given "
                            "to fit(). Drop one of them.")
        from .layer_decay import describe, layer_groups

        layer_groups(model, cfg.weight_decay, cfg.lr, cfg.layer_lr_decay)  # refuses a model without layers
        lines.append(describe(model, cfg.layer_lr_decay))
    mixing = cfg.mixup_alpha or cfg.cutmix_alpha
    if mix is not None and mixing:
        raise UserError("give the mixing once: fit(mix=...) or --mixup-alpha/--cutmix-alpha, not both.")
    if (mix is not None or mixing) and not isinstance(task.loss_fn, CrossEntropy):
        raise UserError("mixup and CutMix need the cross_entropy loss (it takes the mixed class probabilities); "
                        "this task's loss is another one.")
    mix = mix or build_mix(cfg, classes)
    if mix is not None:
        lines.append(_describe_mix(cfg) + "; train accuracy against each mixed image's dominant label")
        task = MixingTask(task, mix)
    return Recipes(task, _ema(cfg, ema, lines), lines)


def _describe_mix(cfg: TrainConfig) -> str:
    kinds = [f"{name} alpha {alpha}" for name, alpha in (("mixup", cfg.mixup_alpha), ("cutmix", cfg.cutmix_alpha))
             if alpha]
    return (" or ".join(kinds) or "fit(mix=...)") + f" on {cfg.mix_prob:.0%} of training batches" * bool(kinds)
