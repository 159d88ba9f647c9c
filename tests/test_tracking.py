"""Trackers read back with their own readers (TensorBoard's event accumulator, `wandb leet inspect` on the offline
run files, MLflow's client on the file store) against metrics.jsonl, across a resume; the lines a person reads;
the performance monitor; no host read outside logging steps; a tracker missing or misspelled."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
import traceback
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from accel_train import TrainConfig, UserError, fit, read_metrics
from accel_train.cli import main as cli_main
from accel_train.config import parse_config
from accel_train.monitor import verdict
from support import REPO, clean_env


def _data(n: int = 96, seed: int = 0) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 6, generator=generator), torch.randint(0, 3, (n,), generator=generator))


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))


def _fit(out: Path, **overrides) -> dict:
    cfg = TrainConfig(output_dir=str(out), epochs=2, batch_size=16, log_every=2, cpu=True, num_threads=1,
                      **overrides)
    return fit(_model(), _data(), _data(32, seed=1), config=cfg, options={"width": 16})


def _jsonl(out: Path, kind: str, key: str) -> list[tuple[int, float]]:
    return [(r["step"], r[key]) for r in read_metrics(out) if r["kind"] == kind and key in r]


def _tensorboard(out: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


def _wandb_records(out: Path) -> list[dict]:
    """Every record of every offline run file, decoded by wandb's own reader (`wandb leet inspect --json`)."""
    records = []
    for path in sorted(out.glob("wandb/offline-run-*/run-*.wandb")):
        proc = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(path)],
                              capture_output=True, text=True, timeout=60, env=clean_env())
        assert proc.returncode == 0, proc.stderr
        records += [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return records


def _mlflow_client(out: Path, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 asks for this to read a file store
    return MlflowClient(tracking_uri=(out / "mlruns").resolve().as_uri())


def _close(measured: list[tuple[int, float]], reference: list[tuple[int, float]]) -> None:
    """Same steps in the same order; values equal to float32 (TensorBoard's storage)."""
    assert [s for s, _ in measured] == [s for s, _ in reference]
    assert [v for _, v in measured] == pytest.approx([v for _, v in reference], rel=1e-6)


def test_every_tracker_reads_back_what_the_loop_logged_across_a_resume(tmp_path, monkeypatch, capsys):
    """12 steps, logged every 2; stopped after step 5, resumed with --resume auto. TensorBoard, W&B (offline) and
    MLflow hold exactly the JSONL's points: same steps, none twice, none backwards; one W&B and one MLflow run."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out, trackers = tmp_path / "run", ["tensorboard", "wandb", "mlflow"]
    assert _fit(out, log_with=trackers, stop_at_step=5)["stopped"] == "--stop-at-step 5"
    first_id = json.loads((out / "trackers.json").read_text())
    _fit(out, log_with="tensorboard,wandb,mlflow", resume="auto")
    assert json.loads((out / "trackers.json").read_text()) == first_id

    rows = read_metrics(out)
    assert [r["step"] for r in rows if r["kind"] == "step"] == [2, 4, 6, 8, 10, 12]
    assert [r["step"] for r in rows if r["kind"] == "epoch"] == [6, 12]
    steps, epochs = [r for r in rows if r["kind"] == "step"], [r for r in rows if r["kind"] == "epoch"]
    assert all(r["grad_norm"] > 0 and r["perf/samples_per_s"] > 0 and 0 <= r["perf/data_wait"] <= 1 for r in steps)
    assert all(r["perf/step_time_s"] > 0 and r["lr_group_1"] == r["lr"] for r in steps)
    peaks = [r["perf/peak_rss_mb"] for r in steps]  # this process's peak: never falls, never above the peak now
    assert peaks == sorted(peaks) and 50 < peaks[0] and peaks[-1] <= resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert all(r["time/epoch_s"] > 0 and r["sys/process_rss_mb"] > 0 and "sys/cpu_percent" in r for r in epochs)
    step_keys = ["train/loss", "lr", "lr_group_1", "grad_norm", "perf/step_time_s", "perf/samples_per_s",
                 "perf/data_wait", "perf/peak_rss_mb"]
    epoch_keys = {"train_epoch/loss": "train/loss", "train_epoch/accuracy": "train/accuracy", "val/loss": "val/loss",
                  "val/accuracy": "val/accuracy", "time/epoch_s": "time/epoch_s", "sys/cpu_percent": "sys/cpu_percent"}

    for key in step_keys:
        _close(_tensorboard(out, key), _jsonl(out, "step", key))
    for key, name in epoch_keys.items():  # the epoch's train metrics as train_epoch/: not on the step's train/loss
        _close(_tensorboard(out, key), _jsonl(out, "epoch", name))

    records = _wandb_records(out)
    runs = [r["run"] for r in records if r["type"] == "run"]
    assert [r["run_id"] for r in runs] == [first_id["wandb"]] * 2  # the resumed part continues the same W&B run
    config = {k: v for r in records if r["type"] == "config" for k, v in r["config"]["update"].items()}
    assert config["options.width"] == 16 and config["lr"] == 0.001 and config["resume"] == "auto"
    history = [(r["history"]["step"]["num"], r["history"]["item"]) for r in records if r["type"] == "history"]
    assert [s for s, _ in history] == sorted({s for s, _ in history})  # no step twice, none backwards
    for key in step_keys:
        assert {s: item[key] for s, item in history if key in item} == dict(_jsonl(out, "step", key)), key
    for key, name in epoch_keys.items():
        assert {s: item[key] for s, item in history if key in item} == dict(_jsonl(out, "epoch", name)), key
    assert not any("kind" in item for _, item in history)

    client = _mlflow_client(out, monkeypatch)
    experiment = client.get_experiment_by_name("accel_train")
    assert [r.info.run_id for r in client.search_runs([experiment.experiment_id])] == [first_id["mlflow"]]
    for key in step_keys:
        points = [(m.step, m.value) for m in client.get_metric_history(first_id["mlflow"], key)]
        assert sorted(points) == _jsonl(out, "step", key), key
    params = client.get_run(first_id["mlflow"]).data.params
    assert params["options.width"] == "16" and params["batch_size"] == "16" and params["log_with"] == str(trackers)

    printed = capsys.readouterr().out  # not a terminal: one plain line per logging step, no redraws
    assert "\r" not in printed
    assert [line.split("  ")[0] for line in printed.splitlines() if line.startswith("step ")] == [
        "step 2/12", "step 4/12", "step 6/12", "step 8/12", "step 10/12", "step 12/12"]


def test_tracker_names_from_flags_yaml_and_python(tmp_path):
    assert parse_config(["--log-with", "wandb"]).log_with == ["wandb"]
    assert parse_config(["--log-with", "tensorboard,wandb"]).log_with == ["tensorboard", "wandb"]
    job = tmp_path / "job.yaml"
    job.write_text("log_with: [mlflow, tensorboard]\n")
    assert parse_config(["--config", str(job)]).log_with == ["mlflow", "tensorboard"]
    assert TrainConfig(log_with=["TensorBoard", "mlflow,wandb"]).log_with == ["tensorboard", "mlflow", "wandb"]
    with pytest.raises(UserError, match=r"^--log-with tensorbord: unknown tracker\. Did you mean `tensorboard`\?"):
        TrainConfig(log_with="tensorbord")


def test_a_misspelled_tracker_is_one_line_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    code = cli_main(["train", "--config", str(REPO / "examples/configs/digits.yaml"), "--log-with", "wandbb",
                     "--output-dir", str(out)])
    assert code == 2 and not out.exists()
    assert capsys.readouterr().err.splitlines() == [
        "accel_train: error: --log-with wandbb: unknown tracker. Did you mean `wandb`? Choose from tensorboard, "
        "wandb, mlflow (several: --log-with tensorboard,wandb)."]


def test_a_tracker_not_installed_is_one_line_naming_the_pip_install(tmp_path, monkeypatch, capsys):
    """wandb blocked (sys.modules['wandb'] = None: `import wandb` fails as if it were absent)."""
    monkeypatch.setitem(sys.modules, "wandb", None)
    out = tmp_path / "run"
    code = cli_main(["train", "--config", str(REPO / "examples/configs/digits.yaml"), "--log-with", "tensorboard,wandb",
                     "--output-dir", str(out)])
    printed = capsys.readouterr()
    assert code == 2 and not out.exists() and printed.out == ""
    assert printed.err.splitlines() == [
        "accel_train: error: --log-with wandb needs the wandb package, which is not installed: pip install wandb "
        "(or pip install 'accel_train[tracking]' for all trackers)."]


class _SlowData(Dataset):
    """A loader that dominates the step: 20 ms per sample for a model that trains in well under a millisecond."""

    def __init__(self):
        self.data = _data(32)

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        time.sleep(0.02)
        return self.data[i]


def test_an_input_bound_run_gets_the_data_wait_verdict(tmp_path, capsys):
    cfg = TrainConfig(output_dir=str(tmp_path / "slow"), epochs=1, batch_size=8, log_every=2, cpu=True,
                      num_threads=1, progress=False, count_flops=True)
    summary = fit(_model(), _SlowData(), config=cfg)
    performance = summary["performance"]
    assert performance["data_wait"] > 0.8 and performance["input_bound"] == verdict(performance["data_wait"], 0)
    assert performance["input_bound"].startswith("input-bound: ") and performance["input_bound"].endswith(
        " % of step time waiting for data; try --num-workers 4")
    assert performance["input_bound"] in capsys.readouterr().out.splitlines()
    assert verdict(0.63, 0) == "input-bound: 63 % of step time waiting for data; try --num-workers 4"
    assert verdict(0.63, 2).endswith("--num-workers 4") and verdict(0.4, 0) is None
    # batch 8: forward 2 x 8 x (6x16 + 16x3); backward: the first layer's weights only, both of the second layer's
    assert performance["flops_per_step"] == 2 * 8 * (6 * 16 + 16 * 3) + 2 * 8 * (6 * 16 + 2 * 16 * 3)
    assert performance["mfu"] is None and performance["cpu_percent"] >= 0 and "gpu_utilization_percent" not in performance


def test_logging_reads_nothing_back_outside_logging_steps(tmp_path, monkeypatch):
    """16 steps, logged every 4: tensor reads (item, tolist, bool, float, int) happen only in the logging steps,
    none in the other 12 steps nor in the loop's work between steps (SGD, mse: nothing else reads; the DataLoader's
    sampler draws its order on the host)."""
    from accel_train import epochs

    phase, reads = {"now": "setup"}, []
    for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, **kwargs):
            in_loader = any("torch/utils/data" in frame.filename for frame in traceback.extract_stack(limit=12))
            reads.append("loader" if in_loader else phase["now"])  # the sampler's shuffle: host tensors
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)

    def traced(step_values=epochs._step_values, train_one_epoch=epochs.train_one_epoch):
        def logged(run):
            phase["now"] = "log"
            values = step_values(run)
            phase["now"] = "loop"
            return values

        def epoch(*args):
            phase["now"] = "loop"
            yield from train_one_epoch(*args)
        return logged, epoch

    logged, epoch = traced()
    monkeypatch.setattr(epochs, "_step_values", logged)
    monkeypatch.setattr(epochs, "train_one_epoch", epoch)
    end_epoch = epochs._end_epoch
    monkeypatch.setattr(epochs, "_end_epoch", lambda run: (phase.update(now="epoch end"), end_epoch(run))[1])
    data = TensorDataset(torch.randn(64, 6), torch.randn(64, 3))
    cfg = TrainConfig(output_dir=str(tmp_path / "r"), epochs=1, batch_size=4, log_every=4, cpu=True, num_threads=1,
                      optimizer="sgd", nonfinite="off", progress=False)
    fit(_model(), data, config=cfg, loss="mse", metrics=[])
    assert len([r for r in read_metrics(tmp_path / "r") if r["kind"] == "step"]) == 4
    assert reads.count("loop") == 0 and reads.count("log") >= 4 and reads.count("loader") > 0


def test_the_terminal_bar_shows_loss_lr_and_samples_per_second(monkeypatch):
    from types import SimpleNamespace

    from accel_train.logs import StepLog

    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    logged = []
    accelerator = SimpleNamespace(is_main_process=True, log=lambda values, step, log_kwargs: logged.append(step))
    log = StepLog(accelerator, every=5, show_bar=True, total=100, done=0)
    log.advance()
    log.step(5, {"train/loss": 0.25, "lr": 1e-3, "perf/samples_per_s": 512.4})
    assert type(log.bar).__name__.startswith("tqdm") and log.bar.total == 100 and logged == [5]
    assert log.bar.postfix == "loss=0.2500, lr=1.00e-03, samples/s=512"
    log.close()


def test_a_run_killed_past_its_checkpoint_resumes_without_duplicate_points(tmp_path, monkeypatch, digits_file):
    """SIGKILL when micro-batch 22 starts: steps 10 and 11 were logged, the checkpoint is step 9. Resumed, each
    tracker holds each step once, with metrics.jsonl's values (TensorBoard purges what the killed run logged past
    step 9; MLflow, which cannot take a point back, is not sent those steps again: the killed run's values are the
    resumed run's, as resume is exact)."""
    from support import SCRIPTS, check, run_python

    out = tmp_path / "run"
    common = [str(SCRIPTS / "resume_job.py"), "--data", digits_file, "--epochs", "2", "--log-with",
              "tensorboard,mlflow", "--output-dir", str(out)]
    assert run_python([*common, "--kill-at-batch", "22"]).returncode != 0
    assert max(r["step"] for r in read_metrics(out)) == 11
    check(run_python([*common, "--resume", "auto"]))
    steps = _jsonl(out, "step", "train/loss")
    assert [s for s, _ in steps] == list(range(1, 17))
    _close(_tensorboard(out, "train/loss"), steps)
    _close(_tensorboard(out, "val/accuracy"), _jsonl(out, "epoch", "val/accuracy"))
    client = _mlflow_client(out, monkeypatch)
    run_id = json.loads((out / "trackers.json").read_text())["mlflow"]
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "train/loss")] == steps
    assert [m.step for m in client.get_metric_history(run_id, "val/accuracy")] == [8, 16]


def test_the_step_clock_divides_by_what_it_measured(monkeypatch):
    """Step time, samples/s, tokens/s and the data-wait share over one interval, on a clock the test sets."""
    from types import SimpleNamespace

    from accel_train import monitor

    now = {"t": 10.0}
    monkeypatch.setattr(monitor.time, "perf_counter", lambda: now["t"])
    batches = SimpleNamespace(wait_s=1.0)
    clock = monitor.StepClock(batches)
    clock.restart(step=4, totals=[0.0, 100.0, 32.0])
    now["t"], batches.wait_s = 15.0, 2.0  # 5 s later, 1 s of them waiting for data, 1 s writing a checkpoint
    clock.pause(1.0)
    values = clock.interval(step=8, totals=[0.0, 500.0, 96.0], tokens=True)
    assert values == {"perf/step_time_s": 1.0, "perf/samples_per_s": 16.0, "perf/data_wait": 0.25,
                      "perf/tokens_per_s": 100.0}
    assert clock.step == 8 and clock.totals == [0.0, 500.0, 96.0] and clock.wait == 2.0


def test_mfu_uses_the_dense_peak_of_the_named_gpu_and_none_elsewhere(monkeypatch):
    from accel_train.monitor import peak_flops

    cuda = torch.device("cuda", 0)
    names = {"NVIDIA H100 80GB HBM3": 989e12, "NVIDIA H100 PCIe": 756e12, "NVIDIA A100-SXM4-80GB": 312e12,
             "NVIDIA A10G": None, "NVIDIA L40": None, "NVIDIA L4": 121e12}
    for name, peak in names.items():
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device, name=name: name)
        assert peak_flops(cuda, half=True) == peak, name
    assert peak_flops(cuda, half=False, tf32=True) == 60e12 and peak_flops(cuda, half=False) == 30.3e12  # the L4
    assert peak_flops(torch.device("cpu"), half=True) is None
