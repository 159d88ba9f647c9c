"""The flag reference, generated from its one source: the trailing comment of each field of `TrainConfig` and of
each job class. It feeds `accel-train train --help` and examples/configs/README.md:

    python -m accel_train.config > examples/configs/README.md      # tests/test_readme.py checks it is current

The config class is passed in (config.py imports this module, not the other way round).
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import textwrap
import typing
from pathlib import Path
from typing import Any, Literal

SECTION = re.compile(r"^\s*#\s*--\s*(.+?)\s*-{3,}\s*$")
FIELD = re.compile(r"^\s{4}(\w+)\s*:.*?(?:#\s*(.*))?$")
USAGE = "usage: accel-train train [--config JOB.yaml] [--key value ...]"


@dataclasses.dataclass
class Flag:
    name: str  # the dash-spelled flag, `--batch-size` or `--job.val-fraction`
    default: str
    help: str


def _choices(kind: Any) -> list[str]:
    if typing.get_origin(kind) is Literal:
        return [str(choice) for choice in typing.get_args(kind)]
    return [c for arg in typing.get_args(kind) for c in _choices(arg)]  # Optional[Literal[...]] and other unions


def _default(field: dataclasses.Field) -> str:
    if field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
    else:
        value = field.default
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value) or "none"
    return str(value)


def sections(cls: type, prefix: str = "--") -> list[tuple[str, list[Flag]]]:
    """The fields of a dataclass as flags, grouped under the `# -- name ---` headers of its source."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init and not f.name.startswith("_")}
    comments, current, grouped = {}, "options", {}
    for line in inspect.getsource(cls).splitlines():
        header = SECTION.match(line)
        if header:
            current = header.group(1)
            continue
        match = FIELD.match(line)
        if match and match.group(1) in fields and match.group(1) not in comments:
            comments[match.group(1)] = (match.group(2) or "").strip()
            grouped.setdefault(current, []).append(match.group(1))  # sections in the order they first appear
    for name in fields:  # inherited fields the source above does not show
        if name not in comments:
            comments[name] = ""
            grouped.setdefault("options", []).append(name)
    result = []
    for title, names in grouped.items():
        flags = []
        for name in names:
            text, choices = comments[name], _choices(hints.get(name))
            if choices and "one of" not in text:
                text = f"one of {', '.join(choices)}" + (f"; {text}" if text else "")
            flags.append(Flag(prefix + name.replace("_", "-"), _default(fields[name]), text))
        result.append((title, flags))
    return result


def render_help(config: type, job: type | None = None, note: str | None = None, usage: str = USAGE) -> str:
    """`accel-train train --help`: every flag with its meaning and default, the job's own options included (a Job
    class as `--job.*`, a script's plain dataclass of options as top-level flags)."""
    from .job import Job

    lines = [usage, "", "Train the job a YAML file describes (--config). Every key of the file is also a flag;",
             "flags override the file. --batch-size and --batch_size both work.", "",
             "  --config JOB.yaml           a job file (see examples/configs/README.md for every key)"]
    groups = sections(config)
    if job is not None:
        prefix = "--job." if issubclass(job, Job) else "--"
        flags = [flag for _, group in sections(job, prefix) for flag in group]
        groups.append((f"{'job' if prefix == '--job.' else 'script'} options ({job.__name__})", flags))
    for title, flags in groups:
        lines += ["", f"{title}:"]
        width = 30
        for flag in flags:
            label = f"  {flag.name}"
            body = f"{flag.help} (default: {flag.default})" if flag.help else f"(default: {flag.default})"
            wrapped = textwrap.wrap(body, 118 - width)
            lines.append(f"{label:<{width}}{wrapped[0]}" if len(label) < width else label)
            lines += [" " * width + rest for rest in (wrapped[1:] if len(label) < width else wrapped)]
    if note:
        lines += ["", note]
    return "\n".join(lines)


def job_classes() -> list[type]:
    """Every job class that ships with accel_train (accel_train.tasks)."""
    import importlib
    import pkgutil

    from . import tasks
    from .job import Job

    found = []
    for module in pkgutil.iter_modules(tasks.__path__):
        loaded = importlib.import_module(f"{tasks.__name__}.{module.name}")
        found += [obj for obj in vars(loaded).values() if isinstance(obj, type) and issubclass(obj, Job)
                  and obj is not Job and obj.__module__ == loaded.__name__]
    return found


def _table(flags: list[Flag]) -> list[str]:
    rows = ["| flag | default | meaning |", "|---|---|---|"]
    return rows + [f"| `{f.name}` | `{f.default}` | {f.help.replace('|', '/')} |" for f in flags]


def reference(config: type) -> str:
    """examples/configs/README.md: every key a job file or the command line accepts."""
    out = ["# Every key of a job file", "",
           "Generated from the field comments of `accel_train.config.TrainConfig` and of each job class by",
           "`python -m accel_train.config > examples/configs/README.md`. In a job file a key is written",
           "`batch_size: 32`; on the command line `--batch-size 32`. Job options go under `job:` in the file",
           "(`job: {class_path: accel_train.tasks.vision.Digits, init_args: {channels: 16}}`) and are",
           "`--job.channels 16` on the command line.", ""]
    for title, flags in sections(config):
        out += [f"## {title}", "", *_table(flags), ""]
    for job in job_classes():
        doc = (job.__doc__ or "").strip().splitlines()[0] if job.__doc__ else ""
        groups = sections(job, "--job.")
        flags = [flag for _, group in groups for flag in group]
        out += [f"## job: `{job.__module__}.{job.__qualname__}`", "", doc, "", *_table(flags), ""]
    return "\n".join(out).rstrip() + "\n"


def job_for_help(argv: list[str], options: type | None) -> tuple[type | None, str | None]:
    """The job class whose options `--help` lists: the one `--config FILE` names, else the script's own."""
    from .job import Job

    path = next((argv[i + 1] for i, word in enumerate(argv[:-1]) if word == "--config"), None)
    if path and Path(path).is_file():
        import importlib

        import yaml

        spec = (yaml.safe_load(Path(path).read_text()) or {}).get("job") or {}
        name = spec.get("class_path") if isinstance(spec, dict) else None
        if name:
            module, _, attr = name.rpartition(".")
            try:
                return getattr(importlib.import_module(module), attr), None
            except (ImportError, AttributeError):
                return None, f"(the job class {name} could not be imported)"
    if options is Job:
        return None, "Give --config JOB.yaml with --help to list that job's options (--job.*)."
    return options, None

