"""PNG figures of a run, drawn with matplotlib from the run folder's own files (no tracker needed):

    plots/epochs.png            one panel per quantity: loss, every metric, the LR; train and val per epoch
    plots/steps.png             one panel per logged step value: train loss, LR, gradient norm, ...
    plots/confusion_matrix.png  the last epoch's validation confusion matrix (classification runs)

Written at the end of a run (unless ACCEL_TRAIN_PLOTS=0) and by `accel-train plot RUN_DIR`. Figures are built on
matplotlib's Agg canvas directly: no pyplot, no global backend switch.
"""

from __future__ import annotations

import argparse
import io
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import per_class
from .errors import UserError
from .run_view import RunView, open_run, writable_folder

SKIP = ("step", "epoch", "kind")
MONITOR = ("perf/", "sys/", "time/")  # the monitor's figures: in metrics.jsonl and the trackers, not in the plots
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")


def _figure(panels: int, width: float = 4.2, height: float = 3.0, left: float = 0.75, bottom: float = 0.5):
    from matplotlib.figure import Figure

    cols = min(panels, 3)
    rows = math.ceil(panels / cols)
    figure = Figure(figsize=(width * cols, height * rows))
    # Fixed margins (in inches, for tick labels, titles and axis labels) instead of layout="constrained": the
    # constrained layout solver doubled the time to draw a run's three figures (0.56 s against 0.30 s, measured).
    figure.subplots_adjust(left=left / (width * cols), right=1 - 0.15 / (width * cols),
                           bottom=bottom / (height * rows), top=1 - 0.3 / (height * rows), wspace=0.3, hspace=0.45)
    axes = [figure.add_subplot(rows, cols, i + 1) for i in range(panels)]
    return figure, axes


def png(figure, dpi: int = 80) -> bytes:
    """The figure as PNG bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    out = io.BytesIO()
    figure.savefig(out, format="png", dpi=dpi)
    return out.getvalue()


def warm_up() -> None:
    """Import matplotlib and draw a tiny figure (fonts, text layout, PNG encoder): what the first figure costs once."""
    figure, (axis,) = _figure(1)
    axis.plot([0, 1], [0, 1], label="warm")
    axis.set_title("warm")
    axis.legend(fontsize=7)
    png(figure, dpi=10)


def epoch_panels(epochs: list[dict[str, Any]]) -> list[str]:
    """The per-epoch quantities: loss first, then each metric (train/val share a panel), the LR last."""
    names: list[str] = []
    for row in epochs:
        for key, value in row.items():
            if (key.startswith(("train/", "val/")) and key.count("/") == 1 and not key.endswith("/samples")
                    and isinstance(value, (int, float))):  # not the monitor's time/, sys/, perf/ figures
                name = key.split("/", 1)[1]
                if name not in names:
                    names.append(name)
    names.sort(key=lambda n: n != "loss")
    return names + (["lr"] if any("lr" in row for row in epochs) else [])


def step_panels(steps: list[dict[str, Any]]) -> dict[str, list[str]]:
    """The per-step panels: each logged number its own, except keys sharing a prefix (the LR of every parameter
    group: lr, lr_group_1, ...) share one; the monitor's speed and memory figures are left out."""
    panels: dict[str, list[str]] = {}
    for row in steps:
        for key, value in row.items():
            if key in SKIP or key.startswith(MONITOR) or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            panel = key if key.startswith(("train/", "val/")) else key.split("/", 1)[0]
            panel = "lr" if panel.startswith("lr_group_") else panel
            if key not in panels.setdefault(panel, []):
                panels[panel].append(key)
    return panels


def _series(rows: list[dict[str, Any]], x: str, key: str) -> tuple[list, list]:
    points = [(row[x], row[key]) for row in rows if isinstance(row.get(key), (int, float))]
    return [p[0] for p in points], [p[1] for p in points]


def epoch_figure(runs: Sequence[RunView]):
    """Per-epoch curves of one run, or of several on shared axes (one colour per run; train dashed, val solid)."""
    names = list(dict.fromkeys(n for run in runs for n in epoch_panels(run.epochs)))
    figure, axes = _figure(len(names))
    for axis, name in zip(axes, names):
        for i, run in enumerate(runs):
            label = f"{run.name} " if len(runs) > 1 else ""
            keys = [("lr", "-", "lr")] if name == "lr" else [(f"train/{name}", "--", "train"),
                                                             (f"val/{name}", "-", "val")]
            for j, (key, style, split) in enumerate(keys):
                xs, ys = _series(run.epochs, "epoch", key)
                color = COLORS[i % len(COLORS)] if len(runs) > 1 else COLORS[j]  # one run: train and val apart
                if xs:
                    axis.plot(xs, ys, style, color=color, marker="o", markersize=3, label=label + split)
        axis.set_title(name)
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    return figure


def step_figure(runs: Sequence[RunView]):
    """Per-step curves (every logged step value) of one run or several on shared axes; None with no step lines."""
    panels: dict[str, list[str]] = {}
    for run in runs:
        for panel, keys in step_panels(run.steps).items():
            panels.setdefault(panel, []).extend(k for k in keys if k not in panels.get(panel, []))
    if not panels:
        return None
    figure, axes = _figure(len(panels))
    for axis, (panel, keys) in zip(axes, panels.items()):
        for i, run in enumerate(runs):
            for j, key in enumerate(keys):
                xs, ys = _series(run.steps, "step", key)
                label = (f"{run.name} " if len(runs) > 1 else "") + (key if len(keys) > 1 else "")
                if xs:
                    axis.plot(xs, ys, color=COLORS[(i + j) % len(COLORS)], linewidth=1.2, label=label or None)
        axis.set_title(panel)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
        if len(runs) > 1 or len(keys) > 1:
            axis.legend(fontsize=7)
    return figure


def confusion_figure(record: dict[str, Any]):
    """The confusion matrix of one epoch's per-class record (rows: true class, columns: predicted)."""
    counts, names = record["confusion"], record["classes"]
    size = max(4.0, 0.45 * len(names) + 2)
    longest = max((len(str(name)) for name in names), default=1)  # tick labels at 8 pt: about 0.07 inch a letter
    figure, (axis,) = _figure(1, size + 1, size, left=0.45 + 0.07 * longest, bottom=0.4 + 0.05 * longest)
    image = axis.imshow(counts, cmap="Blues")
    figure.colorbar(image, ax=axis, shrink=0.8)
    ticks = range(len(names))
    axis.set_xticks(ticks, names, rotation=45, ha="right", fontsize=8)
    axis.set_yticks(ticks, names, fontsize=8)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    axis.set_title(f"validation, epoch {record['epoch']} ({record['samples']} samples)")
    top = max((max(row) for row in counts), default=0)
    if len(names) <= 30:
        for t, row in enumerate(counts):
            for p, value in enumerate(row):
                axis.text(p, t, str(value), ha="center", va="center", fontsize=7,
                          color="white" if value > top / 2 else "black")
    return figure


def last_classes(view: RunView) -> dict[str, Any] | None:
    """The per-class record of the run's last epoch (None for a run that records none)."""
    last = view.epochs[-1]["epoch"]
    records = [r for r in per_class.read_epochs(view.run_dir) if r["epoch"] <= last]
    return records[-1] if records else None


def figures(view: RunView) -> dict[str, bytes]:
    """{file name: PNG bytes} of every figure of the run."""
    out = {"epochs.png": png(epoch_figure([view]))}
    steps = step_figure([view])
    if steps is not None:
        out["steps.png"] = png(steps)
    record = last_classes(view)
    if record is not None:
        out["confusion_matrix.png"] = png(confusion_figure(record))
    return out


def write_plots(run_dir: Path, out: Path | None = None, command: str = "plot") -> list[Path]:
    """Render the run's figures into `out` (default RUN/plots/); returns the files written."""
    view = open_run(run_dir, command)
    folder = writable_folder(out or view.run_dir / "plots", command)
    written = []
    for name, data in figures(view).items():
        (folder / name).write_bytes(data)
        written.append(folder / name)
    return written


def wanted() -> bool:
    """Whether a run ends with its figures (not with ACCEL_TRAIN_PLOTS=0)."""
    return os.environ.get("ACCEL_TRAIN_PLOTS", "1") != "0"


def at_run_end(run_dir: Path, say) -> None:
    """The end of a run: the figures into RUN/plots/ (main process). Skipped with ACCEL_TRAIN_PLOTS=0, with a run
    that finished no epoch, and without matplotlib (the line says what to install)."""
    if not wanted():
        return
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        say("plots: matplotlib is not installed (pip install 'accel_train[report]'); render them later with "
            f"`accel-train plot {run_dir}`")
        return
    try:
        write_plots(run_dir, command="plots")
    except UserError as error:  # no finished epoch, or a folder that cannot take the files: the run itself is done
        say(str(error))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="accel-train plot", description="PNG curves of a run folder.")
    parser.add_argument("run_dir", type=Path, help="the run folder (runs/<name>-<timestamp>)")
    parser.add_argument("--out", type=Path, help="folder for the PNGs (default RUN_DIR/plots)")
    args = parser.parse_args(argv)
    for path in write_plots(args.run_dir, args.out):
        print(path)
    return 0
