"""The per-class report of a classification run: after every epoch, validation's confusion matrix (gathered
predictions, each sample counted once across processes: `Task.confusion`) and the per-class precision, recall,
F1 and support scikit-learn computes from it, written to the run folder as

    classes/epoch_NNN.json   {"epoch", "samples", "classes", "confusion" [true][predicted], "per_class": [...]}
    classes/epoch_NNN.csv    class, precision, recall, f1, support (one row per class)
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Sequence


FOLDER = "classes"


def class_names(classes: int, names: Sequence[str] | None) -> list[str]:
    """The task's class names when they fit the matrix, else the class indices."""
    if names is not None and len(names) == classes:
        return [str(name) for name in names]
    return [str(i) for i in range(classes)]


def per_class_table(confusion: Sequence[Sequence[int]], names: Sequence[str]) -> list[dict[str, Any]]:
    """Precision, recall, F1 and support of each class from the counts [true][predicted], as scikit-learn's
    `precision_recall_fscore_support(zero_division=0)` gives them (tests/test_artifacts.py holds them equal).
    Computed here from the matrix: importing scikit-learn cost a text run 0.3-0.8 s at its first epoch's end."""
    import numpy as np

    counts = np.asarray(confusion, dtype=np.int64)
    tp, true, predicted = np.diag(counts), counts.sum(1), counts.sum(0)

    def divide(a, b):  # 0 where nothing was counted (zero_division=0)
        return np.divide(a, b, out=np.zeros(len(a)), where=b != 0)

    precision, recall = divide(tp, predicted), divide(tp, true)
    f1 = divide(2.0 * tp, 1.0 * true + predicted)  # 2 tp / (2 tp + fp + fn), scikit-learn's own form
    return [{"class": name, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for name, p, r, f, s in zip(names, precision, recall, f1, true)]


def table_csv(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=["class", "precision", "recall", "f1", "support"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def epoch_report(confusion, names: Sequence[str] | None, epoch: int) -> dict[str, Any]:
    """The JSON record of one epoch's confusion matrix [true][predicted] (a tensor or nested lists)."""
    counts = confusion.tolist() if hasattr(confusion, "tolist") else [list(row) for row in confusion]
    labels = class_names(len(counts), names)
    return {"epoch": epoch, "samples": int(sum(map(sum, counts))), "classes": labels, "confusion": counts,
            "per_class": per_class_table(counts, labels)}


def write_epoch(run_dir: Path, task, epoch: int) -> Path | None:
    """Write classes/epoch_NNN.{json,csv} from the task's validation confusion matrix; None when the task records
    none (not a single-label classifier, or no validation data). Main process only."""
    from .checkpoint import write_json  # here: reading records back (the plots' helper process) needs no torch

    recorder = getattr(task, "confusion", None)
    matrix = recorder.matrix() if recorder is not None else None
    if matrix is None:
        return None
    report = epoch_report(matrix, task.class_names, epoch)
    folder = run_dir / FOLDER
    folder.mkdir(exist_ok=True)
    path = folder / f"epoch_{epoch:03d}.json"
    write_json(path, report)
    path.with_suffix(".csv").write_text(table_csv(report["per_class"]))
    return path


def read_epochs(run_dir: Path) -> list[dict[str, Any]]:
    """Every epoch's per-class record in the run folder, in epoch order ([] for a run that wrote none)."""
    return [json.loads(path.read_text()) for path in sorted((run_dir / FOLDER).glob("epoch_*.json"))]
