"""Deprecated: the built-in jobs moved to `accel_train.tasks` (`accel_train.jobs.Digits` is now
`accel_train.tasks.vision.Digits`). These names keep old job files working for one release, with a warning."""

from __future__ import annotations

import importlib
import warnings

MOVED = {
    "Job": "accel_train.job", "Parts": "accel_train.job",
    "Digits": "accel_train.tasks.vision", "Cifar10": "accel_train.tasks.vision",
    "TextClassification": "accel_train.tasks.text", "CausalLM": "accel_train.tasks.causal_lm",
    "ClipFinetune": "accel_train.tasks.clip", "ClipDigits": "accel_train.tasks.clip_digits",
    "FusionDigits": "accel_train.tasks.fusion",
}


_warned: set[str] = set()


def __getattr__(name: str):
    if name not in MOVED:
        raise AttributeError(f"module 'accel_train.jobs' has no attribute '{name}'")
    if name not in _warned:
        _warned.add(name)
        warnings.warn(f"accel_train.jobs.{name} is deprecated and will be removed in the next release: use "
                      f"{MOVED[name]}.{name} (class_path: {MOVED[name]}.{name}).", FutureWarning, stacklevel=2)
    return getattr(importlib.import_module(MOVED[name]), name)
