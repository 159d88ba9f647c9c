"""Optimizers and learning-rate schedules, with schedules counted in optimizer steps.

The rule for a schedule's length, used everywhere: one epoch is `ceil(batches per process / grad_accum)`
optimizer steps (the short last window of an epoch is a step too), and the run is `epochs` of those, or
`max_steps` when set. Batches per process already divide the data by the number of processes, so the same
global batch gives the same number of steps, and the same LR at every step, for any process count.
"""

from __future__ import annotations

import math

import torch

from .config import TrainConfig


def steps_per_epoch(batches_per_process: int, grad_accum: int) -> int:
    return math.ceil(batches_per_process / grad_accum)


def total_steps(cfg: TrainConfig, batches_per_process: int | None) -> int:
    if cfg.max_steps is not None:
        return cfg.max_steps
    if batches_per_process is None:
        raise ValueError("a dataset without a length needs max_steps")
    return cfg.epochs * steps_per_epoch(batches_per_process, cfg.grad_accum)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices and embeddings (2-D and up); never biases or norm weights (1-D)."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.dim() >= 2 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(cfg: TrainConfig, model: torch.nn.Module, **impl: bool) -> torch.optim.Optimizer:
    """The optimizer `cfg` names; `impl` picks torch's kernels (`fused=True`, `foreach=...`). With
    `--layer-lr-decay`, one group per layer and decay kind, each with its own LR (see `layer_decay`)."""
    if cfg.layer_lr_decay is not None:
        from .layer_decay import layer_groups

        groups = layer_groups(model, cfg.weight_decay, cfg.lr, cfg.layer_lr_decay)
    else:
        groups = param_groups(model, cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, **impl)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, betas=tuple(cfg.betas), **impl)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), **impl)


class Warmup:
    """LR multiplier: linear warm-up from 0 over `warmup` steps, then linear or cosine decay to `floor`.

    The same curve as transformers' `get_{linear,cosine}_schedule_with_warmup`, with a floor; a class rather than
    a lambda so that the scheduler's state_dict stays picklable.
    """

    def __init__(self, warmup: int, total: int, shape: str, floor: float = 0.0):
        self.warmup, self.total, self.shape, self.floor = warmup, max(total, 1), shape, floor

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return step / max(1, self.warmup)
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        decay = 1.0 - progress if self.shape == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.floor + (1.0 - self.floor) * decay


class WarmupStableDecay:
    """LR multiplier of warmup-stable-decay: linear warm-up from 0 over `warmup` steps, the peak LR until the last
    `decay` steps of `total`, then linear decay to `floor` at step `total`."""

    def __init__(self, warmup: int, total: int, decay: int | None, floor: float = 0.0):
        self.warmup, self.total, self.floor = warmup, max(total, 1), floor
        self.decay = max(1, min(decay if decay is not None else self.total // 10, self.total - warmup))

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return step / max(1, self.warmup)
        progress = min(1.0, max(0.0, (step - (self.total - self.decay)) / self.decay))
        return 1.0 - (1.0 - self.floor) * progress


def build_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer, steps: int):
    """The scheduler stepped after every optimizer step (`steps` in all).

    `constant` and `plateau` get a scheduler that leaves the LR alone (plateau lowers it from `build_plateau`,
    once per epoch); it keeps one code path in the loop.
    """
    from torch.optim import lr_scheduler as sched

    floor = cfg.min_lr / cfg.lr
    if cfg.scheduler == "step":
        return sched.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
    if cfg.scheduler == "multistep":
        return sched.MultiStepLR(optimizer, milestones=list(cfg.milestones), gamma=cfg.gamma)
    if cfg.scheduler == "exponential":
        return sched.ExponentialLR(optimizer, gamma=cfg.gamma)
    if cfg.scheduler == "cosine":
        return sched.CosineAnnealingLR(optimizer, T_max=max(steps, 1), eta_min=cfg.min_lr)
    if cfg.scheduler == "cosine_restarts":  # stepped once per optimizer step: cycles counted in optimizer steps
        return sched.CosineAnnealingWarmRestarts(optimizer, T_0=cfg.restart_every, T_mult=cfg.restart_mult,
                                                 eta_min=cfg.min_lr)
    if cfg.scheduler == "wsd":
        return sched.LambdaLR(optimizer, WarmupStableDecay(cfg.warmup_steps, steps, cfg.decay_steps, floor))
    if cfg.scheduler in ("linear_warmup", "cosine_warmup"):
        shape = "linear" if cfg.scheduler == "linear_warmup" else "cosine"
        return sched.LambdaLR(optimizer, Warmup(cfg.warmup_steps, steps, shape, floor))
    return sched.ConstantLR(optimizer, factor=1.0, total_iters=0)  # chainable: keeps plateau's changes


def describe_schedule(cfg: TrainConfig, steps: int) -> str | None:
    """For the plan: the optimizer steps at which cosine_restarts restarts, or wsd's three phases."""
    if cfg.scheduler == "cosine_restarts":
        starts, at, length = [], cfg.restart_every, cfg.restart_every
        while at < steps and len(starts) < 8:
            starts.append(at)
            length *= cfg.restart_mult
            at += length
        shown = ", ".join(map(str, starts)) + (" ..." if len(starts) == 8 else "")
        return f"cosine restarts at steps {shown or 'none (one cycle longer than the run)'}"
    if cfg.scheduler == "wsd":
        shape = WarmupStableDecay(cfg.warmup_steps, steps, cfg.decay_steps)
        return (f"warm-up to step {shape.warmup}, stable to step {shape.total - shape.decay}, linear decay to "
                f"min_lr {cfg.min_lr} at step {shape.total}")
    return None


def build_plateau(cfg: TrainConfig, optimizer: torch.optim.Optimizer, mode: str):
    """ReduceLROnPlateau on `monitor` for the `plateau` schedule, else None."""
    from torch.optim.lr_scheduler import ReduceLROnPlateau

    if cfg.scheduler != "plateau":
        return None
    return ReduceLROnPlateau(optimizer, mode=mode, factor=cfg.gamma, patience=cfg.plateau_patience,
                             min_lr=cfg.min_lr)
