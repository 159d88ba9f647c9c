"""After the run: the per-class report (against scikit-learn on the model's own predictions), the PNG curves, the
HTML report rendered in a real headless Chromium, compare, and one clear line for folders they cannot use."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from sklearn import metrics as sk
from torch import nn
from torch.utils.data import TensorDataset

from accel_train import Task, TrainConfig, fit, read_summary
from accel_train.cli import main
from accel_train.report import SECTIONS
from accel_train.tasks.vision import DIGIT_NAMES, load_digits_tensors

EVAL = 297


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two short digits runs (lr 3e-3 and 3e-4; 600 training, 297 validation images; PNGs on), and the first
    run's model with its validation data."""
    images, labels = load_digits_tensors()
    train, val = TensorDataset(images[:600], labels[:600]), TensorDataset(images[600:600 + EVAL], labels[600:600 + EVAL])
    root, threads, plots = tmp_path_factory.mktemp("runs"), torch.get_num_threads(), os.environ.get("ACCEL_TRAIN_PLOTS")
    os.environ["ACCEL_TRAIN_PLOTS"] = "1"
    out = []
    try:
        for lr in (3e-3, 3e-4):
            torch.manual_seed(0)
            model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 64, 10))
            cfg = TrainConfig(epochs=2, batch_size=32, lr=lr, log_every=5, progress=False, num_threads=1,
                              output_dir=str(root / f"lr{lr:g}"))
            fit(model, train, val, config=cfg, task=Task("cross_entropy", ["accuracy", "f1"], class_names=DIGIT_NAMES))
            out.append((Path(cfg.output_dir), model))
    finally:
        torch.set_num_threads(threads)
        os.environ["ACCEL_TRAIN_PLOTS"] = plots or "0"
    return out, val


def test_per_class_report_counts_every_sample_and_equals_sklearn(runs):
    (run, model), val = runs[0][0], runs[1]
    record = json.loads((run / "classes" / "epoch_002.json").read_text())
    assert (run / "classes" / "epoch_001.json").is_file()
    with torch.no_grad():  # the last epoch's validation ran on the final weights
        predicted = model.eval()(val.tensors[0]).argmax(1).numpy()
    truth = val.tensors[1].numpy()
    assert record["samples"] == sum(map(sum, record["confusion"])) == EVAL
    assert record["classes"] == list(DIGIT_NAMES)
    assert record["confusion"] == sk.confusion_matrix(truth, predicted, labels=range(10)).tolist()
    precision, recall, f1, support = sk.precision_recall_fscore_support(truth, predicted, labels=range(10),
                                                                        zero_division=0)
    rows = list(csv.DictReader((run / "classes" / "epoch_002.csv").open()))
    for i, row in enumerate(record["per_class"]):
        assert (row["precision"], row["recall"], row["f1"], row["support"]) == (precision[i], recall[i], f1[i],
                                                                                support[i])
        assert rows[i] == {"class": DIGIT_NAMES[i], **{k: str(row[k]) for k in ("precision", "recall", "f1", "support")}}
    assert read_summary(run)["final_val"]["accuracy"] == pytest.approx((predicted == truth).mean())


def test_per_class_table_equals_sklearn_with_empty_and_never_predicted_classes():
    from accel_train.per_class import per_class_table

    confusion = [[5, 1, 0, 0], [2, 0, 0, 3], [0, 0, 0, 0], [1, 0, 0, 7]]  # class 1 never right, 2 never seen
    true = [t for t, row in enumerate(confusion) for p, n in enumerate(row) for _ in range(n)]
    predicted = [p for row in confusion for p, n in enumerate(row) for _ in range(n)]
    expected = sk.precision_recall_fscore_support(true, predicted, labels=range(4), zero_division=0)
    rows = per_class_table(confusion, ["a", "b", "c", "d"])
    assert [(r["precision"], r["recall"], r["f1"], r["support"]) for r in rows] == list(zip(*expected))
    assert [r["support"] for r in rows] == [6, 5, 0, 8] and rows[1]["f1"] == 0.0


def test_pngs_at_the_end_of_a_run_and_from_plot(runs, capsys):
    from matplotlib.image import imread

    run = runs[0][0][0]
    names = ("epochs.png", "steps.png", "confusion_matrix.png")
    first = {name: (run / "plots" / name).read_bytes() for name in names}
    shutil.rmtree(run / "plots")
    assert main(["plot", str(run)]) == 0
    assert capsys.readouterr().out.split() == [str(run / "plots" / name) for name in names]
    for name in names:
        assert (run / "plots" / name).read_bytes() == first[name], name  # the same figure from the same files
        height, width, _ = imread(run / "plots" / name).shape
        assert width >= 400 and height >= 200, name
    assert imread(run / "plots" / "epochs.png").shape[1] == 3 * 336  # loss, accuracy/f1..., 3 panels a row


def _chromium() -> str | None:
    return next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(name)), None)


PROBE = ("<script>addEventListener('load', () => document.body.setAttribute('data-images', [...document.images]"
         ".map(i => i.complete ? i.naturalWidth : -1).join(',')))</script>")


def test_report_renders_in_headless_chromium(runs, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium; .ci/run installs it)")
    run = runs[0][0][0]
    assert main(["report", str(run)]) == 0
    page = (run / "report.html").read_text()
    assert "src=\"http" not in page and "<link" not in page  # self-contained: nothing fetched
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</head>", PROBE + "</head>"))
    dom = subprocess.run([browser, "--headless", "--disable-gpu", "--no-sandbox", "--dump-dom", probe.as_uri()],
                         capture_output=True, text=True, timeout=60, env={**os.environ, "HOME": str(tmp_path)}).stdout
    widths = [int(w) for w in re.search(r'data-images="([^"]*)"', dom).group(1).split(",")]
    assert len(widths) == page.count("<img ") == 3  # epoch curves, step curves, confusion matrix
    assert min(widths) > 0, widths  # every image decoded
    for section in SECTIONS:
        assert f'<section id="{section}">' in dom, section
    summary = read_summary(run)
    assert f"at epoch {summary['best_epoch']} of 2 (finished)" in dom
    assert dom.count("<tr>") >= 10 + 1 + 3  # per-class rows, header, final metrics


def test_compare_two_runs(runs, tmp_path, capsys):
    (a, _), (b, _) = runs[0]
    assert main(["compare", str(a), str(b), "--out", str(tmp_path)]) == 0
    rows = list(csv.DictReader((tmp_path / "compare.csv").open()))
    assert [r["run"] for r in rows] == [a.name, b.name]
    for row, run in zip(rows, (a, b)):
        summary = read_summary(run)
        assert float(row["best"]) == summary["best_metric"] and int(row["best_epoch"]) == summary["best_epoch"]
        assert float(row["val/f1"]) == summary["final_val"]["f1"]
    assert (tmp_path / "compare_epochs.png").stat().st_size > 10_000 and (tmp_path / "compare_steps.png").is_file()
    assert capsys.readouterr().out.splitlines()[0].split() == ["run", "monitor", "best_epoch", "best", "final_epoch",
                                                               "val/loss", "val/f1", "val/accuracy", "train/loss",
                                                               "train/f1", "train/accuracy"]


def test_report_of_a_run_without_its_summary_yet(runs, tmp_path):
    """A run still going (or killed) has no summary.json: the page picks the best epoch from the epoch lines, by
    the config's --monitor (here none given: the validation loss)."""
    from accel_train import read_metrics
    from accel_train.report import render
    from accel_train.run_view import open_run

    run = runs[0][0][0]
    going = _copy(run, tmp_path / "going")
    (going / "summary.json").unlink()
    page = render(open_run(going, "report"))
    best = min((r for r in read_metrics(run) if r["kind"] == "epoch"), key=lambda r: r["val/loss"])
    assert f"Best <b>loss</b> {best['val/loss']:.4g} at epoch {best['epoch']} of 2 (still running, or stopped" in page
    assert "No summary.json yet." in page and page.count("<img ") == 3


@contextlib.contextmanager
def read_only(folder: Path):
    """`folder` made read-only for real: a permission bit for a user, a read-only tmpfs holding a copy for root."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    copy = folder.parent / f"{folder.name}-ro"
    copy.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(copy)], capture_output=True).returncode:
        pytest.skip("running as root without the right to mount a read-only tmpfs")
    try:
        shutil.copytree(folder, copy, dirs_exist_ok=True)
        subprocess.run(["mount", "-o", "remount,ro", str(copy)], check=True)
        yield copy
    finally:
        subprocess.run(["umount", str(copy)], check=True)


def test_folders_they_cannot_use_are_one_line(runs, tmp_path, capsys):
    run = runs[0][0][0]
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "metrics.jsonl").write_text('{"step": 5, "kind": "step", "train/loss": 2.0}\n')
    cases = [
        (["plot", str(tmp_path)], f"plot: {tmp_path} is not a run folder: it has no metrics.jsonl, plan.json, "
                                  "config.yaml. Give the folder a training run wrote"),
        (["report", str(partial)], f"report: {partial} has no finished epoch yet (metrics.jsonl holds 1 step "
                                   "line(s) and no epoch line)"),
        (["compare", str(run)], "compare needs at least two run folders"),
        (["report", str(tmp_path / "missing")], f"report: {tmp_path / 'missing'} is not a folder."),
    ]
    with read_only(_copy(run, tmp_path / "ro")) as locked:
        cases += [(["report", str(locked)], f"report: cannot write into {locked} (Read-only file system): pass --out"
                   if os.geteuid() == 0 else f"report: cannot write into {locked} (Permission denied): pass --out"),
                  (["plot", str(locked)], f"plot: cannot write into {locked / 'plots'} (")]
        for argv, first in cases:
            assert main(argv) == 2, argv
            err = capsys.readouterr().err
            assert err.startswith(f"accel_train: error: {first}") and err.count("\n") == 1, (argv, err)


def _copy(run: Path, to: Path) -> Path:
    shutil.copytree(run, to, ignore=shutil.ignore_patterns("checkpoints", "*.safetensors", "plots", "report.html"))
    return to


def test_epoch_panels_are_the_train_and_val_metrics_and_the_lr():
    from accel_train.plots import epoch_panels

    rows = [{"epoch": 1, "train/loss": 1.0, "val/loss": 1.1, "val/f1": 0.5, "val/samples": 360, "lr": 0.1,
             "time/epoch_s": 0.2, "sys/cpu_percent": 97.0, "perf/epoch_data_wait": 0.01}]
    assert epoch_panels(rows) == ["loss", "f1", "lr"]


def test_step_panels_are_the_training_values_with_every_groups_lr_in_one():
    from accel_train.plots import step_panels

    rows = [{"step": 10, "epoch": 1, "train/loss": 1.0, "lr": 0.1, "lr_group_1": 0.2, "grad_norm": 3.0,
             "perf/step_time_s": 0.002, "perf/peak_rss_mb": 900.0, "skipped_steps": 1}]
    assert step_panels(rows) == {"train/loss": ["train/loss"], "lr": ["lr", "lr_group_1"], "grad_norm": ["grad_norm"],
                                 "skipped_steps": ["skipped_steps"]}
