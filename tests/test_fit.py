"""The Python API in one process: real digits accuracy, the run folder, exact accumulation, resume, precision."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import TensorDataset

from accel_train import TrainConfig, UserError, fit, read_metrics, read_summary
from accel_train.cli import main as cli_main
from accel_train.tasks.vision import DigitsCNN, digits_splits, load_digits_tensors
from equivalence import Options, build
from support import REPO

QUIET = dict(progress=False, log_every=1)


def test_demo_job_reaches_97_percent_with_a_complete_run_folder(tmp_path):
    """The `make demo` job: digits CNN, >= 97% validation accuracy (its time: tests/benchmarks/test_bench_demo.py)."""
    out = tmp_path / "demo"
    assert cli_main(["train", "--config", str(REPO / "examples/configs/digits.yaml"), "--output-dir", str(out),
                     "--progress", "false"]) == 0
    summary = read_summary(out)
    assert summary["best_metric"] >= 0.97 and summary["final_val"]["accuracy"] >= 0.97
    assert summary["final_val"]["samples"] == 360 and summary["samples"] == 15 * 1437
    assert summary["epochs"] == 15 and summary["steps"] == 15 * 45 and summary["samples_per_s"] > 0
    assert summary["processes"] == 1 and summary["precision"] == "fp32"

    config = __import__("yaml").safe_load((out / "config.yaml").read_text())
    assert config["lr"] == 0.003 and config["options"]["job"]["init_args"]["channels"] == 32
    plan = json.loads((out / "plan.json").read_text())
    assert plan["steps_per_epoch"] == 45 and plan["total_steps"] == 675 and plan["warmup_steps"] == 20
    assert plan["versions"]["torch"] == importlib.metadata.version("torch")

    rows = read_metrics(out)
    steps = [r for r in rows if r["kind"] == "step"]
    epochs = [r for r in rows if r["kind"] == "epoch"]
    assert [r["step"] for r in steps] == list(range(10, 676, 10))
    assert [r["epoch"] for r in epochs] == list(range(1, 16)) and epochs[-1]["step"] == 675
    best = max(epochs, key=lambda r: r["val/accuracy"])
    assert summary["best_epoch"] == best["epoch"] and summary["best_metric"] == best["val/accuracy"]

    # a checkpoint per epoch through save_state: the last and the best are kept
    kept = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert f"step_{675:07d}" in kept and f"step_{best['step']:07d}" in kept and len(kept) <= 2
    assert Path(summary["best_checkpoint"]).name == f"step_{best['step']:07d}"
    for name in kept:
        assert (out / "checkpoints" / name / "COMPLETE").is_file()

    # final weights in safetensors, loadable into a fresh model that scores what the summary says
    model = DigitsCNN(32)
    model.load_state_dict(load_file(out / "model.safetensors"))
    model.eval()
    _, val = digits_splits(0.2, seed=0)
    with torch.no_grad():
        accuracy = (model(val.tensors[0]).argmax(1) == val.tensors[1]).sum().item() / len(val)
    assert accuracy == pytest.approx(summary["final_val"]["accuracy"], abs=1e-9)


def _train(tmp_path: Path, name: str, **overrides) -> Path:
    cfg = TrainConfig(output_dir=str(tmp_path / name), epochs=2, lr=0.01, scheduler="linear_warmup", warmup_steps=3,
                      max_grad_norm=1.0, weight_decay=0.1, **{**QUIET, **overrides})
    model, data = build(Options(samples=300, double=True))
    fit(model, data, config=cfg, metrics=["accuracy"])
    return tmp_path / name


def test_short_last_window_is_weighted_by_its_samples(tmp_path):
    """Accumulation 4 x batch 8 == batch 32 in one step, although 300 samples leave a last window of 12."""
    one = load_file(_train(tmp_path, "one", batch_size=32) / "model.safetensors")
    accumulated = load_file(_train(tmp_path, "acc", batch_size=8, grad_accum=4) / "model.safetensors")
    for key in one:
        torch.testing.assert_close(accumulated[key], one[key], rtol=0, atol=1e-10)


def test_resume_from_an_epoch_checkpoint_equals_the_uninterrupted_run(tmp_path):
    images, labels = load_digits_tensors()
    data = TensorDataset(images[:400], labels[:400])

    def run(name, epochs, resume=None):
        torch.manual_seed(0)
        model = DigitsCNN(8)  # dropout and batch norm: RNG and buffers must be restored too
        cfg = TrainConfig(output_dir=str(tmp_path / name), epochs=epochs, batch_size=32, resume=resume, **QUIET)
        return fit(model, data, config=cfg)

    run("full", 3)
    run("part", 2)
    summary = run("part", 3, resume="auto")
    assert summary["epochs"] == 3 and summary["steps"] == 39
    full, part = load_file(tmp_path / "full/model.safetensors"), load_file(tmp_path / "part/model.safetensors")
    for key in full:
        assert torch.equal(full[key], part[key]), key
    assert [r["step"] for r in read_metrics(tmp_path / "part") if r["kind"] == "epoch"] == [13, 26, 39]


def test_bf16_on_cpu_is_real_autocast(tmp_path):
    train, val = digits_splits(0.2, seed=0)
    seen = []
    model = DigitsCNN(8)
    model.head.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    summary = fit(model, train, val, config=TrainConfig(output_dir=str(tmp_path / "bf16"), epochs=2,
                                                        mixed_precision="bf16", **QUIET))
    assert summary["precision"] == "bf16 autocast" and torch.bfloat16 in seen
    assert summary["best_metric"] > 0.8


def test_regression_and_multilabel_train_through_the_same_loop(tmp_path):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(512, 6, generator=gen)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0, 1.0]) + 0.5
    torch.manual_seed(0)
    summary = fit(nn.Linear(6, 1), TensorDataset(x[:400], y[:400]), TensorDataset(x[400:], y[400:]), loss="mse",
                  metrics=["mse", "mae"], config=TrainConfig(output_dir=str(tmp_path / "reg"), epochs=30, lr=0.05,
                                                             batch_size=32, **QUIET))
    assert summary["monitor"] == "mse" and summary["monitor_mode"] == "min"
    assert summary["final_val"]["mse"] < 1e-3

    images, labels = load_digits_tensors()
    targets = torch.stack([labels % 2 == 0, labels >= 5, labels == 0], dim=1).float()  # three yes/no labels
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 3))
    summary = fit(model, TensorDataset(images[:1400], targets[:1400]), TensorDataset(images[1400:], targets[1400:]),
                  loss="bce_with_logits", metrics=["accuracy"],
                  config=TrainConfig(output_dir=str(tmp_path / "multi"), epochs=8, lr=3e-3, **QUIET))
    assert summary["final_val"]["accuracy"] > 0.9


def test_plateau_schedule_lowers_lr_in_a_real_run(tmp_path):
    images, labels = load_digits_tensors()
    torch.manual_seed(0)
    summary = fit(DigitsCNN(8), TensorDataset(images[:200], labels[:200]), TensorDataset(images[:50], labels[:50]),
                  config=TrainConfig(output_dir=str(tmp_path / "p"), epochs=6, lr=0.01, scheduler="plateau",
                                     plateau_patience=0, gamma=0.5, monitor="accuracy", monitor_mode="min", **QUIET))
    # "min" on a rising accuracy: every epoch after the first is worse, so with patience 0 each halves the LR
    accuracies = [r["val/accuracy"] for r in read_metrics(tmp_path / "p") if r["kind"] == "epoch"]
    lrs = [r["lr"] for r in read_metrics(tmp_path / "p") if r["kind"] == "epoch"]
    expected, lr, best = [], 0.01, None
    for acc in accuracies:
        if best is not None and acc >= best:
            lr /= 2
        best = acc if best is None else min(best, acc)
        expected.append(lr)
    assert lrs == pytest.approx(expected) and min(lrs) < 0.01 and summary["monitor_mode"] == "min"


def test_bad_inputs_are_clear_errors(tmp_path, capsys):
    train, val = digits_splits(0.2, seed=0)
    with pytest.raises(UserError, match="fp16 mixed precision needs a GPU"):
        fit(DigitsCNN(8), train, config=TrainConfig(output_dir=str(tmp_path / "a"), mixed_precision="fp16"))
    with pytest.raises(UserError, match="dataset is empty"):
        fit(DigitsCNN(8), TensorDataset(torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long)),
            config=TrainConfig(output_dir=str(tmp_path / "b")))
    with pytest.raises(UserError, match="label 10 is outside"):  # every label checked before the first step
        bad = TensorDataset(train.tensors[0], train.tensors[1].clone().index_fill_(0, torch.tensor([1000]), 10))
        fit(DigitsCNN(8), bad, config=TrainConfig(output_dir=str(tmp_path / "c"), **QUIET))
    with pytest.raises(UserError, match=r"cannot take this batch \(float32\[64, 1, 8, 8\]"):
        fit(nn.Linear(64, 10), train, config=TrainConfig(output_dir=str(tmp_path / "d"), **QUIET))
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "config.yaml").write_text("epochs: 1\n")
    with pytest.raises(UserError, match="already holds another run"):
        fit(DigitsCNN(8), train, config=TrainConfig(output_dir=str(tmp_path / "e")))
    assert (tmp_path / "e" / "config.yaml").read_text() == "epochs: 1\n"
    with pytest.raises(UserError, match="no such checkpoint"):
        fit(DigitsCNN(8), train, config=TrainConfig(output_dir=str(tmp_path / "f"), resume=str(tmp_path / "nope")))
    with pytest.raises(UserError, match="--monitor f1 is not among"):
        fit(DigitsCNN(8), TensorDataset(*val.tensors), val,
            config=TrainConfig(output_dir=str(tmp_path / "g"), epochs=1, monitor="f1", **QUIET))


def test_unused_parameters_are_named(tmp_path, capsys):
    class Unused(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.spare = nn.Linear(64, 10), nn.Linear(3, 3)

        def forward(self, x):
            return self.used(x.flatten(1))

    train, _ = digits_splits(0.2, seed=0)
    fit(Unused(), train, config=TrainConfig(output_dir=str(tmp_path / "u"), epochs=1, **QUIET))
    assert "2 parameter(s) received no gradient: spare.weight, spare.bias" in capsys.readouterr().out


class _DictSamples(torch.utils.data.Dataset):
    """Dict samples without `labels`."""

    def __len__(self) -> int:
        return 32

    def __getitem__(self, index: int) -> dict:
        return {"x": torch.full((4,), float(index))}


class _Keyword(nn.Linear):
    def forward(self, x):  # called as model(**batch)
        return super().forward(x)


class _ExtraDim(nn.Linear):
    def forward(self, x):
        return super().forward(x).unsqueeze(1)


_X, _Y = torch.randn(32, 4), torch.arange(32) % 3
API_MISTAKES = {  # every Python-API mistake -> (model, data, fit arguments, the one line); nothing is left behind
    "dict batch without labels": (lambda: _Keyword(4, 3), lambda: _DictSamples(), {},
        "the batch has no targets for loss=cross_entropy: a dict batch needs a `labels` entry (or pass loss=None "
        "and a model that returns its own `loss`)."),
    "dict batch, no labels, no loss": (lambda: _Keyword(4, 3), lambda: _DictSamples(), {"loss": None},
        "the model returned no `loss` for this dict batch: include `labels` in the batch, or give a loss (for "
        "example loss='cross_entropy')."),
    "labels [n, 1] for cross-entropy": (lambda: nn.Linear(4, 3), lambda: TensorDataset(_X, _Y[:, None]), {},
        "cross_entropy needs one class index per sample, shape [8], got targets int64[8, 1]. Use labels.squeeze(1) "
        "(or labels.view(-1)) in the dataset."),
    "output with an extra dimension": (lambda: _ExtraDim(4, 3), lambda: TensorDataset(_X, _Y), {},
        "cross_entropy takes class logits [n, classes] for targets [n] (output float32[8, 1, 3], targets "
        "int64[8]). Make the model return one row of class scores per sample (for example remove the extra "
        "dimension with .squeeze(1) or .flatten(1))."),
    "mse output wider than the target": (lambda: nn.Linear(4, 3), lambda: TensorDataset(_X, _X[:, 0]),
        {"loss": "mse", "metrics": ["mse"]},
        "mse needs one prediction per target value (output float32[8, 3], targets float32[8]). Give the model as "
        "many outputs as the targets have values (for example a final Linear(..., 1) for one target per sample)."),
    "batch size 0": (lambda: nn.Linear(4, 3), lambda: TensorDataset(_X, _Y), {"batch_size": 0},
        "batch_size must be at least 1 (got 0). Set --batch-size to 1 or more."),
}


@pytest.mark.parametrize("name", list(API_MISTAKES))
def test_python_api_mistakes_are_one_line(tmp_path, name):
    make_model, make_data, args, line = API_MISTAKES[name]
    args = dict(args)
    settings = {"batch_size": args.pop("batch_size", 8)}
    with pytest.raises(UserError) as error:  # TrainConfig raises it too, when built before fit
        fit(make_model(), make_data(), config=TrainConfig(output_dir=str(tmp_path / "run"), epochs=1, progress=False,
                                                          **settings), **args)
    assert str(error.value) == line
    assert not (tmp_path / "run").exists(), "a failed start leaves nothing that blocks the same command"
