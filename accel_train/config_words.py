"""jsonargparse's rejections of a value, in plain words: `--max-steps must be an integer or null (got x).` instead
of its dump of Union subtypes; for a job option, the option's own type (`--job.channels must be an integer`)."""

from __future__ import annotations

import re
import types
import typing
from typing import Any, Literal, Union

WORDS = {int: ["an integer"], float: ["a number"], bool: ["true", "false"], str: ["a string"], type(None): ["null"]}
PLURAL = {int: "integers", float: "numbers", bool: "true/false values", str: "names"}
EXAMPLE = {int: "[10, 20]", float: "[0.9, 0.999]", bool: "[true, false]", str: "[tensorboard, wandb]"}


def describe(kind: Any) -> str:
    """A type in words: `int | None` -> 'an integer or null', `bool | None` -> 'true, false or null'."""
    words = _alternatives(kind)
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"


def _alternatives(kind: Any) -> list[str]:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is Literal:
        return ["one of " + ", ".join(str(arg) for arg in args)]
    if origin in (Union, types.UnionType):
        return [word for arg in sorted(args, key=lambda arg: arg is type(None)) for word in _alternatives(arg)]
    if origin in (list, tuple) and args and args[0] in PLURAL:
        count = f"{len(args)} " if origin is tuple and Ellipsis not in args else ""
        return [f"a list of {count}{PLURAL[args[0]]}, e.g. {EXAMPLE[args[0]]}"]
    return WORDS.get(kind, [getattr(kind, "__name__", str(kind))])


# other trainers' names for our keys (Hugging Face Trainer, Lightning, common scripts)
ALIASES = {"learning_rate": "lr", "num_epochs": "epochs", "max_epochs": "epochs", "train_batch_size": "batch_size",
           "per_device_train_batch_size": "batch_size", "gradient_accumulation_steps": "grad_accum",
           "accumulate_grad_batches": "grad_accum", "lr_scheduler": "scheduler", "lr_scheduler_type": "scheduler",
           "gradient_clip_val": "max_grad_norm", "precision": "mixed_precision", "fp16": "mixed_precision",
           "bf16": "mixed_precision", "save_steps": "checkpoint_every", "logging_steps": "log_every",
           "resume_from_checkpoint": "resume", "report_to": "log_with", "save_total_limit": "keep_checkpoints",
           "dataloader_num_workers": "num_workers", "metric_for_best_model": "monitor"}


def suggest(key: str, valid: list[str], top_level: bool) -> str:
    """' Did you mean `x`?' for an unknown key: another trainer's name for one of ours, the closest valid key, a
    near miss of another trainer's name, else (for a short list such as a job's options) every valid key."""
    import difflib

    from .errors import closest

    if top_level and key in ALIASES:
        return f" Did you mean `{ALIASES[key]}`?"
    if hint := closest(key, valid):
        return hint
    alias = difflib.get_close_matches(key, list(ALIASES), n=1, cutoff=0.75) if top_level else []
    if alias:
        return f" Did you mean `{ALIASES[alias[0]]}`?"
    return f" Valid keys: {', '.join(valid)}." if 0 < len(valid) <= 12 else ""


def hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # an annotation that does not resolve: no plain words for that class
        return {}


def job_value_error(message: str) -> str | None:
    """A job option's bad value (jsonargparse nests it under the `job` union), as one plain line."""
    found = re.search(r"class_path '([\w.]+)':\s*Parser key \"(\w+)\":\s*Expected", message)
    value = re.search(r"NestedArg\(key='[\w.]+', val=(.*)\)\s*$", message) or re.search(r"Got value: (\S+)", message)
    if not found or not value:
        return None
    import importlib

    module, _, name = found.group(1).rpartition(".")
    try:
        kind = hints(getattr(importlib.import_module(module), name)).get(found.group(2))
    except (ImportError, AttributeError):
        kind = None
    return value_error(f"job.{found.group(2)}", kind, value.group(1).strip("'\""))


def value_error(key: str, kind: Any, value: str) -> str | None:
    if kind is None:
        return None
    return f"--{key.replace('_', '-')} must be {describe(kind)} (got {value})."
