"""A run folder read back for `plot`, `report` and `compare`: its own files only (metrics.jsonl, summary.json,
plan.json, config.yaml, classes/), so the views exist with no tracker installed. A folder that is not a run, a run
without a finished epoch, or a folder that cannot be written to is one `UserError` line."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError

RUN_FILES = ("metrics.jsonl", "plan.json", "config.yaml")


@dataclass
class RunView:
    """What a run folder holds. `summary` is None while the run is still going (or was killed)."""

    run_dir: Path
    steps: list[dict[str, Any]]  # the "kind": "step" lines of metrics.jsonl
    epochs: list[dict[str, Any]]  # the "kind": "epoch" lines
    plan: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] | None = None
    label: str | None = None  # how figures and tables name the run; default the folder's name

    @property
    def name(self) -> str:
        return self.label or self.run_dir.name


def _lines(path: Path) -> list[dict[str, Any]]:
    """metrics.jsonl's records; a torn last line (a run killed mid-write) is left out."""
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def open_run(path: str | Path, command: str) -> RunView:
    """Read the run folder `path` for `command` (plot, report, compare); refuse what is not a run with epochs."""
    run_dir = Path(path)
    if not run_dir.is_dir():
        raise UserError(f"{command}: {run_dir} is not a folder. Give a run folder (runs/<name>-<timestamp>).")
    missing = [name for name in RUN_FILES if not (run_dir / name).is_file()]
    if "metrics.jsonl" in missing:
        raise UserError(f"{command}: {run_dir} is not a run folder: it has no {', '.join(missing)}. Give the folder "
                        "a training run wrote (runs/<name>-<timestamp>, or its --output-dir).")
    rows = _lines(run_dir / "metrics.jsonl")
    epochs = [row for row in rows if row.get("kind") == "epoch"]
    if not epochs:
        steps = sum(row.get("kind") == "step" for row in rows)
        raise UserError(f"{command}: {run_dir} has no finished epoch yet (metrics.jsonl holds {steps} step line(s) "
                        "and no epoch line): run it again once the first epoch has ended.")
    read = lambda name, load: load((run_dir / name).read_text()) if (run_dir / name).is_file() else None  # noqa: E731
    return RunView(run_dir, [row for row in rows if row.get("kind") == "step"], epochs,
                   read("plan.json", json.loads) or {}, read("config.yaml", yaml.safe_load) or {},
                   read("summary.json", json.loads))


def writable_folder(folder: Path, command: str, hint: str = "pass --out to write elsewhere") -> Path:
    """`folder`, created if needed, after checking that files can be written into it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise UserError(f"{command}: cannot write into {folder} ({error.strerror or error}): {hint}.") from None
    return folder


def best_and_final(view: RunView) -> dict[str, Any]:
    """Best epoch and metric, and the last epoch's metrics: from summary.json, else from the epoch lines."""
    last = view.epochs[-1]
    final = {k: v for k, v in last.items()
             if k.startswith(("train/", "val/")) and k.count("/") == 1 and not k.endswith("/samples")
             and isinstance(v, (int, float))}  # not the monitor's time/, sys/, perf/ figures
    summary = view.summary or {}
    monitor = summary.get("monitor") or view.config.get("monitor") or "loss"
    if summary.get("best_epoch") is not None:
        best_epoch, best = summary["best_epoch"], summary["best_metric"]
    else:  # a run still going: the best epoch so far, by the monitored validation (else training) value
        key = next((f"{split}/{monitor}" for split in ("val", "train") if f"{split}/{monitor}" in last), None)
        lower = (summary.get("monitor_mode") or view.config.get("monitor_mode")) == "min" or monitor.endswith(
            ("loss", "mse", "mae", "perplexity", "error"))
        pick = min if lower else max
        row = pick(view.epochs, key=lambda r: r.get(key, 0.0)) if key else last
        best_epoch, best = row["epoch"], row.get(key)
    return {"monitor": monitor, "best_epoch": best_epoch, "best_metric": best, "epochs": len(view.epochs),
            "final_epoch": last["epoch"], "final": final, "finished": view.summary is not None}
