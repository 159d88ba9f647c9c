"""Checkpoints are complete or invisible; non-finite steps are skipped or stop the run; early stopping; best
model selection and export; bad resumes are refused. In one process unless the test says otherwise."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import TensorDataset

from accel_train import TrainConfig, UserError, fit, read_metrics, read_summary
from accel_train.checkpoint import Checkpointer, resolve_resume
from support import SCRIPTS, check, launch, run_python

from resume_job import Options, build  # noqa: E402

QUIET = dict(progress=False, log_every=1)


def _job(tmp_path: Path, name: str, opts: Options | None = None, **cfg):
    settings = dict(output_dir=str(tmp_path / name), optimizer="adamw", lr=0.01, scheduler="cosine_warmup",
                    warmup_steps=4, grad_accum=2, batch_size=16, epochs=2, max_grad_norm=1.0, **QUIET)
    model, data, val = build(opts or Options(), 2)
    return fit(model, data, val, config=TrainConfig(**{**settings, **cfg}))


def _params(path: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in load_file(path / "model.safetensors").items() if not k.endswith("batches")}


def _unchanged(before: Path, after: Path) -> None:
    """Weights, optimizer state and schedule of two checkpoints are bitwise equal."""
    a, b = _params(before), _params(after)
    assert all(torch.equal(a[k], b[k]) for k in a)
    oa, ob = (torch.load(p / "optimizer.bin", weights_only=True) for p in (before, after))
    for key, state in oa["state"].items():
        assert all(torch.equal(v, ob["state"][key][n]) for n, v in state.items())
    sa, sb = (torch.load(p / "scheduler.bin", weights_only=True) for p in (before, after))
    assert sa == sb


@pytest.fixture(params=["foreach", "fused", "fused, deferred"])
def impl(request, monkeypatch):
    """The optimizer kernels; "deferred": as on an accelerator, the verdict stays on the device and is read a step
    later (on the CPU it is read at once, `gradients.keeps_verdicts_on_device`)."""
    asked = []
    if request.param.endswith("deferred"):
        monkeypatch.setattr(sys.modules["accel_train.fit"], "keeps_verdicts_on_device",
                            lambda device: asked.append(device) or True)
    yield request.param.split(",")[0]
    assert bool(asked) == request.param.endswith("deferred")  # the run did keep its verdicts on the device


def test_nan_loss_is_skipped_without_touching_weights_optimizer_or_schedule(tmp_path, impl):
    summary = _job(tmp_path, "skip", Options(nan_at_step=5), checkpoint_every=1, keep_checkpoints=100,
                   optimizer_impl=impl)
    ckpt = tmp_path / "skip" / "checkpoints"
    _unchanged(ckpt / "step_0000004", ckpt / "step_0000005")  # step 5 was skipped
    assert summary["skipped_steps"] == 1 and summary["steps"] == 16
    rows = [r for r in read_metrics(tmp_path / "skip") if r["kind"] == "step"]
    assert [r.get("skipped_steps", 0) for r in rows][3:6] == [0, 1, 1]
    a, b = _params(ckpt / "step_0000005"), _params(ckpt / "step_0000006")
    assert not all(torch.equal(a[k], b[k]) for k in a), "training goes on after the skipped step"


def test_nan_loss_with_stop_policy_keeps_the_last_good_checkpoint(tmp_path, impl):
    with pytest.raises(UserError, match="not finite: training stopped before this optimizer step"):
        _job(tmp_path, "stop", Options(nan_at_step=5), checkpoint_every=2, nonfinite="stop", optimizer_impl=impl,
             log_every=100)  # no logging step in between: a deferred verdict is read when step 6 is decided
    latest = Checkpointer(tmp_path / "stop").latest()
    assert latest.name == "step_0000004" and all(torch.isfinite(v).all() for v in _params(latest).values())


def test_nonfinite_weights_are_never_saved(tmp_path):
    with pytest.raises(UserError, match="weights are not finite at step 5"):
        _job(tmp_path, "off", Options(nan_at_step=5), checkpoint_every=1, nonfinite="off", keep_checkpoints=100)
    assert Checkpointer(tmp_path / "off").latest().name == "step_0000004"


def test_best_checkpoint_follows_min_and_max_and_restore_best(tmp_path):
    for mode, monitor in (("max", "accuracy"), ("min", "loss")):
        summary = _job(tmp_path, mode, epochs=4, monitor=monitor, keep_checkpoints=1, restore_best=True)
        epochs = [r for r in read_metrics(tmp_path / mode) if r["kind"] == "epoch"]
        pick = max if mode == "max" else min
        best = pick(epochs, key=lambda r: r[f"val/{monitor}"])
        assert summary["best_metric"] == best[f"val/{monitor}"] and summary["best_epoch"] == best["epoch"]
        best_dir = Path(summary["best_checkpoint"])
        assert best_dir.name == f"step_{best['step']:07d}" and best_dir.is_dir()
        kept = {p.name for p in (tmp_path / mode / "checkpoints").iterdir()}
        assert kept == {best_dir.name, f"step_{summary['steps']:07d}"}, "the newest and the best are kept"
        final = load_file(tmp_path / mode / "model.safetensors")  # restore_best: the export is the best model
        assert all(torch.equal(v, load_file(best_dir / "model.safetensors")[k]) for k, v in final.items())


def test_early_stopping_with_patience_and_min_delta(tmp_path):
    summary = _job(tmp_path, "early", epochs=30, monitor="loss", early_stopping=2, min_delta=0.5, lr=0.003)
    epochs = [r["val/loss"] for r in read_metrics(tmp_path / "early") if r["kind"] == "epoch"]
    # stops at the first epoch that is the 2nd in a row not beating the best by 0.5
    best, bad, stop = float("inf"), 0, None
    for i, value in enumerate(epochs, 1):
        bad = 0 if value < best - 0.5 else bad + 1
        best = min(best, value)
        if bad >= 2:
            stop = i
            break
    assert stop is not None and summary["epochs"] == stop == len(epochs) < 30


def test_failed_save_leaves_no_partial_checkpoint(tmp_path, monkeypatch):
    _job(tmp_path, "run", epochs=1)
    root = tmp_path / "run" / "checkpoints"
    before = sorted(p.name for p in root.iterdir())
    from accelerate import Accelerator

    def half_then_fail(self, output_dir, **kwargs):
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        (Path(output_dir) / "model.safetensors").write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(Accelerator, "save_state", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        _job(tmp_path, "run", epochs=2, resume="auto")
    assert sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) == before
    assert resolve_resume("auto", tmp_path / "run").name == before[-1]


def test_sigkill_during_saves_never_leaves_a_visible_partial_checkpoint(tmp_path):
    """20 SIGKILLs at random moments of back-to-back saves (a 4 MB model): after each, the newest complete
    checkpoint loads, and keeping the last 2 never deleted the last complete one."""
    check(run_python([str(SCRIPTS / "save_storm.py"), str(tmp_path / "storm"), "20"],
                                            timeout=300))
    report = json.loads((tmp_path / "storm" / "report.json").read_text())
    assert report["kills"] == 20 and report["resumed_ok"] == 20 and report["killed_mid_save"] >= 5


def test_bad_resumes_are_refused(tmp_path):
    _job(tmp_path, "run", epochs=1)
    ckpt = Checkpointer(tmp_path / "run").latest()
    with pytest.raises(UserError, match="does not match this model"):  # another model's checkpoint
        fit(nn.Linear(64, 10), TensorDataset(torch.randn(32, 64), torch.zeros(32, dtype=torch.long)),
            config=TrainConfig(output_dir=str(tmp_path / "other"), resume=str(ckpt), **QUIET))
    damaged = tmp_path / "damaged"
    import shutil

    shutil.copytree(tmp_path / "run", damaged)
    path = damaged / "checkpoints" / ckpt.name / "model.safetensors"
    path.write_bytes(path.read_bytes()[:100])  # truncated
    with pytest.raises(UserError, match="damaged"):
        _job(tmp_path, "damaged", resume="auto")
    (damaged / "checkpoints" / ckpt.name / "COMPLETE").unlink()  # an interrupted save
    with pytest.raises(UserError, match="not a complete checkpoint"):
        _job(tmp_path, "x", resume=str(damaged / "checkpoints" / ckpt.name))
    with pytest.raises(UserError, match="no complete checkpoint"):
        _job(tmp_path, "damaged", resume="auto")
    with pytest.raises(UserError, match="already holds another run"):  # another run's folder
        _job(tmp_path, "damaged", resume=str(ckpt))
    assert path.stat().st_size == 100, "nothing was overwritten"


@pytest.mark.multiprocess
@pytest.mark.parametrize("defer", ["false", "true"], ids=["read at once", "deferred"])
def test_ddp_inf_gradient_on_one_rank_and_early_stop_agree(tmp_path, digits_file, defer):
    """Rank 1 alone gets an inf gradient at step 3: both ranks skip that step; early stopping stops both at
    the same epoch (the launch ends, no rank waits). The verdict read at once (the CPU), or kept on the device and
    read a step later (a GPU)."""
    out = tmp_path / "run"
    check(launch([str(SCRIPTS / "resume_job.py"), "--data", digits_file, "--nan-at-step", "3", "--defer", defer,
                  "--inf-grad-rank", "1", "--checkpoint-every", "1", "--keep-checkpoints", "100",
                  "--early-stopping", "1", "--min-delta", "10", "--monitor", "loss", "--output-dir", str(out)]))
    summary = read_summary(out)
    assert summary["skipped_steps"] == 1 and summary["epochs"] == 2 and summary["processes"] == 2
    _unchanged(out / "checkpoints" / "step_0000002", out / "checkpoints" / "step_0000003")
