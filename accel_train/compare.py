"""`accel-train compare RUN_A RUN_B ...`: the runs' curves on shared axes and a table of their best and final
metrics, from each run folder's own files.

    compare_epochs.png   per-epoch loss, metrics and LR of every run (one colour per run; train dashed, val solid)
    compare_steps.png    per-step logged values of every run
    compare.csv          run, monitor, best epoch, best value, final epoch, each final train/val metric
"""

from __future__ import annotations

import argparse
import csv
import io
from pathlib import Path
from typing import Any

from . import plots
from .errors import UserError
from .run_view import RunView, best_and_final, open_run, writable_folder


def table(views: list[RunView]) -> tuple[list[str], list[list[Any]]]:
    """(header, rows): one row per run."""
    found = [best_and_final(view) for view in views]
    metrics = list(dict.fromkeys(key for f in found for key in sorted(f["final"], key=lambda k: k.startswith("train"))))
    header = ["run", "monitor", "best_epoch", "best", "final_epoch", *metrics]
    rows = [[view.name, f["monitor"], f["best_epoch"], f["best_metric"], f["final_epoch"],
             *(f["final"].get(key) for key in metrics)] for view, f in zip(views, found)]
    return header, rows


def _text(header: list[str], rows: list[list[Any]]) -> str:
    cells = [header] + [["-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v) for v in row]
                        for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


def compare(run_dirs: list[Path], out: Path) -> tuple[str, list[Path]]:
    """Write the comparison into `out`; returns (the table as text, files written)."""
    if len(run_dirs) < 2:
        raise UserError("compare needs at least two run folders: accel-train compare RUN_A RUN_B ...")
    views = [open_run(path, "compare") for path in run_dirs]
    names = [view.name for view in views]
    if len(set(names)) < len(names):  # same folder names under different parents: label by the path
        for view in views:
            view.label = str(view.run_dir)
    folder = writable_folder(out, "compare")
    header, rows = table(views)
    written = [folder / "compare_epochs.png"]
    written[0].write_bytes(plots.png(plots.epoch_figure(views)))
    steps = plots.step_figure(views)
    if steps is not None:
        written.append(folder / "compare_steps.png")
        written[-1].write_bytes(plots.png(steps))
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows([header, *rows])
    written.append(folder / "compare.csv")
    written[-1].write_text(buffer.getvalue())
    return _text(header, rows), written


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="accel-train compare", description="Several runs on shared axes.")
    parser.add_argument("run_dirs", type=Path, nargs="+", help="two or more run folders")
    parser.add_argument("--out", type=Path, default=Path("."), help="folder for the PNGs and CSV (default: here)")
    args = parser.parse_args(argv)
    text, written = compare(args.run_dirs, args.out)
    print(text)
    for path in written:
        print(path)
    return 0
