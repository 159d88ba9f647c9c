"""`accel-train report RUN_DIR`: one self-contained HTML page of a run (images embedded as data URIs, no network,
no files beside it): results, curves, confusion matrix and per-class table, timings and throughput, hardware,
the plan and the config. Rendered from the run folder's own files; written to RUN_DIR/report.html or --out."""

from __future__ import annotations

import argparse
import base64
import html
import json
from pathlib import Path
from typing import Any

import yaml

from . import plots
from .run_view import RunView, best_and_final, open_run, writable_folder

SECTIONS = ("results", "curves", "classes", "timings", "hardware", "plan", "config")
TIMINGS = ("wall_time_s", "train_time_s", "samples_per_s", "epochs", "steps", "samples", "skipped_steps", "stopped")
HARDWARE = ("device", "distributed_type", "processes", "machines", "threads_per_process", "threads_rule",
            "precision_in_effect", "compute_dtype")
STYLE = """body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1280px;padding:0 1em;color:#222}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:3px 9px;text-align:left}
th{background:#f4f6f8}td.n{text-align:right;font-variant-numeric:tabular-nums}img{max-width:100%;display:block}
pre{background:#f6f8fa;padding:1em;overflow:auto;font-size:12px}.muted{color:#777}"""


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:,.0f}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str)
    return "" if value is None else str(value)


def _table(rows: list[list[Any]], header: list[str] | None = None) -> str:
    head = "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>" if header else ""
    body = "".join("<tr>" + "".join(
        f"<td class=n>{html.escape(_fmt(c))}</td>" if isinstance(c, (int, float)) and not isinstance(c, bool)
        else f"<td>{html.escape(_fmt(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table>{head}{body}</table>"


def _image(data: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def _section(key: str, title: str, body: str) -> str:
    return f'<section id="{key}"><h2>{html.escape(title)}</h2>\n{body}\n</section>'


def _results(view: RunView) -> str:
    found = best_and_final(view)
    status = "finished" if found["finished"] else "still running, or stopped before its summary"
    best = (f"<p>Best <b>{html.escape(found['monitor'])}</b> {html.escape(_fmt(found['best_metric']))} at epoch "
            f"{found['best_epoch']} of {found['epochs']} ({status}).</p>")
    names = list(dict.fromkeys(k.split("/", 1)[1] for k in found["final"]))
    rows = [[name, found["final"].get(f"train/{name}"), found["final"].get(f"val/{name}")] for name in names]
    return best + f"<p>Final metrics, epoch {found['final_epoch']}:</p>" + _table(rows, ["metric", "train", "val"])


def _classes(view: RunView, figures: dict[str, bytes]) -> str:
    record = plots.last_classes(view)
    if record is None:
        return '<p class="muted">No per-class report: this run is not a single-label classifier with validation.</p>'
    rows = [[r["class"], r["precision"], r["recall"], r["f1"], r["support"]] for r in record["per_class"]]
    return (_image(figures["confusion_matrix.png"], "confusion matrix")
            + f"<p>Validation, epoch {record['epoch']}, {record['samples']} samples:</p>"
            + _table(rows, ["class", "precision", "recall", "f1", "support"]))


def _timings(view: RunView) -> str:
    summary = view.summary or {}
    rows = [[key, summary[key]] for key in TIMINGS if key in summary]
    rows += [[key, value] for key, value in summary.items()  # whatever else the summary measured
             if key not in TIMINGS and key not in HARDWARE and not key.startswith(("final_", "best_", "monitor"))
             and key not in ("run_dir", "precision")]
    return _table(rows, ["", "value"]) if rows else '<p class="muted">No summary.json yet.</p>'


def _hardware(view: RunView) -> str:
    facts = {**view.plan, **(view.summary or {})}
    rows = [[key, facts[key]] for key in HARDWARE if key in facts]
    rows += [[name, version] for name, version in view.plan.get("versions", {}).items()]
    return _table(rows, ["", "value"])


def render(view: RunView) -> str:
    """The page, as one HTML string."""
    figures = plots.figures(view)
    curves = "".join(_image(figures[name], name.removesuffix(".png") + " curves")
                     for name in ("epochs.png", "steps.png") if name in figures)
    plan = _table([[k, v] for k, v in view.plan.items() if k != "versions"], ["", "value"])
    config = f"<pre>{html.escape(yaml.safe_dump(view.config, sort_keys=False))}</pre>"
    bodies = {"results": ("Results", _results(view)), "curves": ("Curves", curves),
              "classes": ("Confusion matrix and per-class report", _classes(view, figures)),
              "timings": ("Timings and throughput", _timings(view)), "hardware": ("Hardware", _hardware(view)),
              "plan": ("Plan", plan), "config": ("Config", config)}
    sections = "\n".join(_section(key, *bodies[key]) for key in SECTIONS)
    title = html.escape(f"accel_train run {view.name}")
    return (f"<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8><title>{title}</title>"
            f"<style>{STYLE}</style></head>\n<body><h1>{title}</h1><p class=muted>{html.escape(str(view.run_dir))}"
            f"</p>\n{sections}\n</body></html>\n")


def write_report(run_dir: Path, out: Path | None = None) -> Path:
    """Render RUN_DIR's report to `out` (default RUN_DIR/report.html); returns the file written."""
    view = open_run(run_dir, "report")
    out = out or view.run_dir / "report.html"
    writable_folder(out.parent, "report", hint="pass --out PATH.html to write the page elsewhere")
    page = render(view)
    out.write_text(page, encoding="utf-8")
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="accel-train report", description="One self-contained HTML page of a run.")
    parser.add_argument("run_dir", type=Path, help="the run folder (runs/<name>-<timestamp>)")
    parser.add_argument("--out", type=Path, help="the HTML file to write (default RUN_DIR/report.html)")
    args = parser.parse_args(argv)
    print(write_report(args.run_dir, args.out))
    return 0
