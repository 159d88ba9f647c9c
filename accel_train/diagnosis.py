"""`accel-train diagnose --config JOB.yaml` and `diagnose(...)`: a pre-flight check of a job on one batch, with
no run folder written and the user's model left untouched (the checks work on copies).

    inputs, labels, output vs loss, metrics, initial loss, gradients, parameters, schedule, overfit

Each finding has a verdict (see `diagnosis_checks` for the rules); the command exits 0 when no check fails, 1
otherwise, printing every finding either way.
"""

from __future__ import annotations

import argparse
import copy
import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from .config import TrainConfig
from .data import dataset_labels, make_loader
from .diagnosis_checks import (Finding, check_gradients, check_initial_loss, check_inputs, check_labels,
    check_outputs, check_parameters, layer_norms)
from .errors import UserError
from .launch import set_threads
from .optim import build_optimizer, build_scheduler, total_steps
from .task import Task, logits_of

SCHEDULE_STEPS = 8  # LRs shown
MARK = {"ok": "OK  ", "warn": "WARN", "fail": "FAIL"}


@dataclass
class Diagnosis:
    """The findings of `diagnose`, in check order."""

    findings: list[Finding]

    @property
    def healthy(self) -> bool:
        """No check failed (warnings allowed)."""
        return all(f.verdict != "fail" for f in self.findings)

    def __getitem__(self, check: str) -> Finding:
        found = [f for f in self.findings if f.check == check]
        if not found:
            raise KeyError(f"no `{check}` finding (checks run: {', '.join(f.check for f in self.findings)})")
        return found[0]

    def __str__(self) -> str:
        width = max(len(f.check) for f in self.findings)
        lines = [f"  {MARK[f.verdict]}  {f.check.ljust(width)}  {f.detail}" for f in self.findings]
        verdict = "healthy" if self.healthy else f"{sum(f.verdict == 'fail' for f in self.findings)} check(s) failed"
        return "\n".join(["accel_train diagnose", *lines, f"  -> {verdict}"])


def _slice(value: Any, k: int) -> Any:
    """The first `k` samples of a batch (tensors cut along their first dimension)."""
    if isinstance(value, torch.Tensor):
        return value[:k] if value.dim() else value
    if isinstance(value, Mapping):
        return {key: _slice(item, k) for key, item in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(_slice(item, k) for item in value)
    return value


def _mean_loss(task: Task, model, batch) -> tuple[torch.Tensor, Any]:
    """(mean loss per unit, the task's Output) of one forward pass."""
    out = task.losses(*task.forward(model, batch))
    loss, count = out.total()
    return loss / count, out


def _forward_checks(task: Task, model, batch, findings: list[Finding]) -> torch.Tensor | None:
    """Output vs loss, labels, metrics, initial loss; the mean loss to backpropagate (None when the loss failed)."""
    try:
        output, targets = task.forward(model, batch)
    except (UserError, RuntimeError, TypeError, ValueError, IndexError) as error:
        findings.append(Finding("output vs loss", "fail", f"the model cannot take the batch: {error}"))
        return None
    logits = logits_of(output)
    findings.append(check_labels(targets, logits, task.loss_fn, task.dataset_labels))
    try:
        out = task.losses(output, targets)
    except (UserError, RuntimeError, ValueError, IndexError) as error:
        findings.append(check_outputs(output, targets, None, str(error).splitlines()[0]))
        return None
    findings.append(check_outputs(output, targets, out.losses, None))
    findings.append(check_metrics(task, model, batch))
    loss, count = out.total()
    mean = loss / count
    findings.append(check_initial_loss(float(mean.detach()), logits, targets, task.loss_fn))
    return mean


def check_metrics(task: Task, model, batch) -> Finding:
    """Validation's metrics on the batch, computed as `evaluate` computes them (eval mode, no gradient)."""
    model.eval()
    try:
        with torch.no_grad():
            out = task(model, batch)
            metrics = task.make_metrics()
            metrics.update(out.predictions, out.targets)
            values = metrics.compute()
    except (UserError, RuntimeError, TypeError, ValueError, IndexError) as error:
        return Finding("metrics", "fail", str(error).splitlines()[0])
    finally:
        model.train()
    return Finding("metrics", "ok", ", ".join(f"{k} {v:.3g}" for k, v in values.items() if "/" not in k) or "none")


def check_schedule(cfg: TrainConfig, steps: int, scheduler: Any = None) -> Finding:
    """The LR of the first optimizer steps, replayed on a stand-in optimizer (the run's own is left alone)."""
    if scheduler is not None:
        lrs = [group["lr"] for group in scheduler.optimizer.param_groups]
        return Finding("schedule", "ok", f"your own scheduler; LR now {', '.join(f'{v:.3g}' for v in lrs)}")
    stand_in = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.lr)
    schedule = build_scheduler(cfg, stand_in, steps)
    lrs = []
    for _ in range(min(steps, 200)):  # the first steps; a few ms each
        lrs.append(stand_in.param_groups[0]["lr"])
        stand_in.step()
        schedule.step()
    shown = ", ".join(f"{v:.3g}" for v in lrs[:SCHEDULE_STEPS])
    text = f"{cfg.scheduler}, peak {cfg.lr:g}, {steps} steps; LR at steps 1-{min(steps, SCHEDULE_STEPS)}: {shown}"
    if max(lrs[:SCHEDULE_STEPS], default=0.0) == 0 and max(lrs, default=0.0) == 0:
        return Finding("schedule", "fail", f"{text}: the LR stays 0")
    if cfg.scheduler in ("linear_warmup", "cosine_warmup") and cfg.warmup_steps >= steps:
        return Finding("schedule", "warn", f"{text}: the warm-up ({cfg.warmup_steps} steps) outlasts the run "
                                           f"({steps} steps); the LR never reaches its peak")
    return Finding("schedule", "ok", text)


def check_overfit(task: Task, model, batch, make_optimizer: Callable, steps: int) -> Finding:
    """Train a copy of the model on one small batch for `steps` steps at the peak LR: it should memorise it."""
    model = copy.deepcopy(model).train()
    optimizer = make_optimizer(model)
    losses = []
    for _ in range(steps):
        loss, _ = _mean_loss(task, model, batch)
        losses.append(float(loss.detach()))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        loss, out = _mean_loss(task, model, batch)
    first, last, correct = losses[0], float(loss), _correct(out)
    right = "" if correct is None else f", {correct}/{len(out.targets)} right"
    text = f"one batch of {len(out.losses)} for {steps} steps: loss {first:.4g} -> {last:.4g}{right}"
    if math.isfinite(last) and (last <= 0.2 * first or correct == len(out.targets)):
        return Finding("overfit", "ok", text)
    if math.isfinite(last) and last <= 0.9 * first:  # a loss whose floor is above 0 (repeated captions) lands here
        return Finding("overfit", "warn", f"{text}: learning, but not memorised; try more --overfit-steps")
    return Finding("overfit", "fail", f"{text}: a model that cannot memorise one batch will not learn the data; "
                                      "check the LR, the loss and the labels")


def _correct(out) -> int | None:
    """Samples classified right, for class logits [n, C] and integer labels [n]; None otherwise."""
    predictions, targets = out.predictions, out.targets
    if (isinstance(predictions, torch.Tensor) and isinstance(targets, torch.Tensor) and predictions.dim() == 2
            and targets.dim() == 1 and not targets.is_floating_point()):
        return int((predictions.argmax(-1) == targets).sum())
    return None


def diagnose(model: torch.nn.Module, train_data: Any, eval_data: Any = None, *, overfit_steps: int = 50,
             overfit_samples: int = 16, **fit_args: Any) -> Diagnosis:
    """Check a job before training it. Takes what `fit` takes (`fit_args`: config, loss, metrics, task,
    optimizer, scheduler, collate_fn; processor and options are accepted and not needed here).

    Looks at the first training batch (inputs, labels against the output width, output against the loss, the
    metrics, the initial loss), one backward pass (per-layer gradient norms, parameters without a gradient or
    frozen), the schedule's first steps, and whether a copy of the model memorises `overfit_samples` samples in
    `overfit_steps` steps. Writes nothing; `model` and `optimizer` are left as they were.
    """
    from .fit import fit

    bound = inspect.signature(fit).bind(model, train_data, eval_data, **fit_args)  # fit's own parameters
    bound.apply_defaults()
    args = bound.arguments
    cfg, optimizer = args["config"] or TrainConfig(), args["optimizer"]
    task = (args["task"] or Task(args["loss"], args["metrics"])).for_run(dataset_labels(train_data))
    task.checked = True  # the checks below report what the first-batch check would raise
    set_threads(cfg.num_threads)  # as fit does: more threads than idle cores busy-wait against each other
    device = torch.device("cuda" if torch.cuda.is_available() and not cfg.cpu else "cpu")
    loader = make_loader(train_data, batch_size=cfg.batch_size, shuffle=True, collate_fn=args["collate_fn"],
                         seed=cfg.seed)
    try:
        batch = next(iter(loader))
    except StopIteration:
        raise UserError("diagnose: the training data gives no batch.") from None
    from accelerate.utils import send_to_device

    batch = send_to_device(batch, device)
    work = copy.deepcopy(model).to(device).train()
    findings = [check_inputs(batch)]
    mean = _forward_checks(task, work, batch, findings)
    if mean is not None:
        mean.backward()
        findings.append(check_gradients(layer_norms(work)))
        findings.append(check_parameters(work, _held(model, optimizer)))
    batches = len(loader) if hasattr(loader, "__len__") else None
    if batches is None and cfg.max_steps is None:
        findings.append(Finding("schedule", "fail", "the training data has no length (a stream): set --max-steps"))
    else:
        findings.append(check_schedule(cfg, total_steps(cfg, batches), args["scheduler"]))
    if mean is not None:
        make = (lambda m: _like(optimizer, m)) if optimizer is not None else (lambda m: build_optimizer(cfg, m))
        findings.append(check_overfit(task, work, _slice(batch, overfit_samples), make, overfit_steps))
    return Diagnosis(findings)


def _held(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> set[str] | None:
    """Names of the model's parameters that the user's optimizer holds (None: the run builds its own)."""
    if optimizer is None:
        return None
    ids = {id(p) for group in optimizer.param_groups for p in group["params"]}
    return {name for name, p in model.named_parameters() if id(p) in ids}


def main(argv: list[str]) -> int:
    """`accel-train diagnose --config JOB.yaml [--overfit-steps N] [any train flag]`."""
    from accelerate.utils import set_seed

    from .config import parse_config
    from .job import Job

    parser = argparse.ArgumentParser(prog="accel-train diagnose", add_help=False)
    parser.add_argument("--overfit-steps", "--overfit_steps", type=int, default=50)
    known, rest = parser.parse_known_args(argv)
    if "-h" in rest or "--help" in rest:
        print("accel-train diagnose: one batch of the job checked before training, nothing written; exit 1 on a "
              "FAIL.\n  --overfit-steps N  steps of the overfit-one-batch check (default 50); and the job's keys:")
    if known.overfit_steps < 1:
        raise UserError(f"--overfit-steps must be at least 1 (got {known.overfit_steps}).")
    cfg, job = parse_config(rest, options=Job)
    set_seed(cfg.seed)
    parts = job.build(cfg.seed)
    found = diagnose(parts.model, parts.train_data, parts.eval_data, config=cfg, task=parts.task,
                     collate_fn=parts.collate_fn, overfit_steps=known.overfit_steps)
    print(found)
    return 0 if found.healthy else 1


def _like(optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> torch.optim.Optimizer:
    """An optimizer of the user's kind and settings over `model` (a copy), leaving the user's own untouched."""
    accepted = inspect.signature(type(optimizer)).parameters
    return type(optimizer)(model.parameters(), **{k: v for k, v in optimizer.defaults.items() if k in accepted})
