"""The speed options: each changes what it says (kernels, memory format, recomputation) and not what is learned,
and each is refused with one line where it cannot apply."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from accel_train import TrainConfig, UserError, fit
from accel_train.tasks.vision import DigitsCNN, digits_splits


def _cnn() -> nn.Module:
    """A small CNN without batch norm (a conv bias before batch norm has no gradient in exact arithmetic: Adam
    turns its rounding noise into steps, which no kernel choice reproduces)."""
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(128, 10))


def _digits(tmp_path, name: str, **settings) -> tuple[dict, dict]:
    torch.manual_seed(0)
    train, val = digits_splits(0.2, seed=0)
    cfg = TrainConfig(output_dir=str(tmp_path / name), max_steps=15, batch_size=32, progress=False, num_threads=1,
                      **settings)
    summary = fit(_cnn(), train, val, config=cfg)
    plan = json.loads((tmp_path / name / "plan.json").read_text())
    return summary, {"plan": plan, "weights": load_file(tmp_path / name / "model.safetensors")}


def _close(a: dict, b: dict, tol: float) -> None:
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=tol, atol=tol)


def test_fused_and_for_loop_kernels_learn_what_foreach_learns(tmp_path, one_thread):
    _, foreach = _digits(tmp_path, "foreach", optimizer_impl="foreach")
    _, fused = _digits(tmp_path, "fused")  # auto: fused where torch has the kernels, the CPU among them
    _, loop = _digits(tmp_path, "loop", optimizer_impl="for_loop")
    assert foreach["plan"]["speed"] == ["foreach adamw"] and fused["plan"]["speed"] == ["fused adamw"]
    assert loop["plan"]["speed"] == ["for-loop adamw"]
    _close(fused["weights"], foreach["weights"], 1e-5)
    _close(loop["weights"], foreach["weights"], 1e-5)


def test_channels_last_changes_the_layout_not_the_result(tmp_path, one_thread):
    _, plain = _digits(tmp_path, "nchw")
    _, nhwc = _digits(tmp_path, "nhwc", channels_last=True)
    assert nhwc["plan"]["speed"] == ["channels_last", "fused adamw"]
    _close(nhwc["weights"], plain["weights"], 1e-4)
    model = DigitsCNN(8)
    from accel_train.speed import prepare_model

    prepare_model(TrainConfig(channels_last=True), model, "cpu")
    assert model.features[0].weight.is_contiguous(memory_format=torch.channels_last)  # the digits CNN too


def test_gradient_checkpointing_recomputes_and_learns_the_same(tmp_path, one_thread):
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=16, num_labels=3)
    generator = torch.Generator().manual_seed(0)
    rows = [{"input_ids": torch.randint(0, 50, (8,), generator=generator), "attention_mask": torch.ones(8, dtype=torch.long),
             "labels": torch.tensor(i % 3)} for i in range(32)]
    weights = {}
    for name, on in (("off", False), ("on", True)):
        torch.manual_seed(0)
        model = BertForSequenceClassification(config)
        fit(model, rows, loss=None, metrics=[], config=TrainConfig(
            output_dir=str(tmp_path / name), epochs=2, batch_size=8, progress=False, gradient_checkpointing=on))
        flag = "is_activation_checkpointing" if hasattr(model, "is_activation_checkpointing") else \
            "is_gradient_checkpointing"
        assert getattr(model, flag) is on
        weights[name] = load_file(tmp_path / name / "model.safetensors")
    _close(weights["on"], weights["off"], 1e-6)


@pytest.mark.parametrize(("settings", "line"), [
    ({"channels_last": True}, "--channels-last applies to models with 2-D convolutions (4-D image inputs); this "
                              "model (Linear) has none. Drop --channels-last."),
    ({"gradient_checkpointing": True}, "--gradient-checkpointing needs a Hugging Face model that supports it; Linear "
                                       "does not. For your own model, wrap blocks in torch.utils.checkpoint.checkpoint."),
    ({"tf32": True}, "--tf32 needs an NVIDIA GPU of the Ampere generation or newer (compute capability 8.0+); this run "
                     "is on cpu. Drop --tf32."),
])
def test_an_option_that_cannot_apply_is_one_line_before_anything_is_written(tmp_path, settings, line):
    data = torch.utils.data.TensorDataset(torch.randn(8, 4), torch.arange(8) % 2)
    with pytest.raises(UserError) as error:
        fit(nn.Linear(4, 2), data, config=TrainConfig(output_dir=str(tmp_path / "run"), progress=False, cpu=True,
                                                      **settings))
    assert str(error.value) == line and not (tmp_path / "run").exists()


def test_compile_through_accelerate_captures_the_model_and_changes_no_number(tmp_path, cifar_copy, one_thread):
    """--compile full with the eager backend (dynamo's capture without code generation, quick on a CPU): the model
    is compiled by Accelerate's prepare, and the golden digits job computes the same bits."""
    from accelerate.utils import is_compiled_module

    from accel_train.launch import make_accelerator, shutdown
    from golden.jobs import COMMON, compare, jobs, result
    from accel_train.cli import main

    accelerator, _ = make_accelerator(TrainConfig(cpu=True, compile="full", compile_backend="eager"))
    assert is_compiled_module(accelerator.prepare(nn.Linear(2, 2)))
    shutdown(accelerator)
    out = tmp_path / "compiled"
    assert main(["train", *jobs(cifar_copy)["digits"], *COMMON, "--output-dir", str(out), "--compile", "full",
                 "--compile-backend", "eager"]) == 0
    compare("digits", result(out))
    plan = json.loads((out / "plan.json").read_text())
    assert plan["speed"] == ["compile full (eager, mode default)", "fused adamw"]


@pytest.mark.parametrize(("settings", "line"), [
    ({"compile": "full", "compile_backend": "cudagraphs"},
     "--compile-backend cudagraphs needs a CUDA GPU; use inductor or eager on the CPU."),
    ({"pin_memory": True}, "--pin-memory true needs a GPU to copy the batches to; this run is on the CPU. Drop it."),
])
def test_compile_and_pinning_that_cannot_apply_are_one_line(tmp_path, settings, line):
    data = torch.utils.data.TensorDataset(torch.randn(8, 4), torch.arange(8) % 2)
    with pytest.raises(UserError) as error:
        fit(nn.Linear(4, 2), data, config=TrainConfig(output_dir=str(tmp_path / "run"), progress=False, cpu=True,
                                                      **settings))
    assert str(error.value) == line and not (tmp_path / "run").exists()


class _Hungry(nn.Module):
    """Runs out of memory on batches larger than `fits`, as a GPU would (the message CUDA gives)."""

    def __init__(self, fits: int):
        super().__init__()
        self.fits, self.net = fits, nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))

    def forward(self, x):
        if len(x) > self.fits:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.net(x)


def _hungry_run(tmp_path, name: str, fits: int, **settings) -> dict:
    torch.manual_seed(0)
    model = _Hungry(fits)
    data = torch.utils.data.TensorDataset(torch.randn(96, 4, generator=torch.Generator().manual_seed(1)),
                                          torch.arange(96) % 3)
    fit(model, data, config=TrainConfig(output_dir=str(tmp_path / name), epochs=2, progress=False, num_threads=1,
                                        **settings))
    return {"plan": json.loads((tmp_path / name / "plan.json").read_text()),
            "weights": load_file(tmp_path / name / "model.safetensors")}


def test_auto_batch_size_steps_down_and_keeps_the_effective_batch(tmp_path, one_thread):
    auto = _hungry_run(tmp_path, "auto", fits=10, batch_size=32, auto_batch_size=True)
    assert (auto["plan"]["batch_size_per_device"], auto["plan"]["grad_accum"]) == (8, 4)  # 32 and 16 did not fit
    assert auto["plan"]["effective_batch"] == 32 and auto["plan"]["total_steps"] == 6
    assert auto["plan"]["notes"] == ["--auto-batch-size: 32 per device did not fit in memory; 8 x 4 accumulation "
                                     "keeps the effective batch"]
    by_hand = _hungry_run(tmp_path, "by-hand", fits=10, batch_size=8, grad_accum=4)
    for key, value in by_hand["weights"].items():  # the probe left no trace: bitwise the run asked for by hand
        assert torch.equal(auto["weights"][key], value), key


def test_auto_batch_size_that_finds_nothing_is_one_line(tmp_path):
    with pytest.raises(UserError, match="--auto-batch-size: no per-device batch fits in memory, not even 1 sample"):
        _hungry_run(tmp_path, "none", fits=0, batch_size=4, auto_batch_size=True)
    assert not (tmp_path / "none").exists()
