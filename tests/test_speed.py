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
    _, foreach = _digits(tmp_path, "foreach")
    _, fused = _digits(tmp_path, "fused", optimizer_impl="fused")
    _, loop = _digits(tmp_path, "loop", optimizer_impl="for_loop")
    assert foreach["plan"]["speed"] == ["foreach adamw"] and fused["plan"]["speed"] == ["fused adamw"]
    assert loop["plan"]["speed"] == ["for-loop adamw"]
    _close(fused["weights"], foreach["weights"], 1e-5)
    _close(loop["weights"], foreach["weights"], 1e-5)


def test_channels_last_changes_the_layout_not_the_result(tmp_path, one_thread):
    _, plain = _digits(tmp_path, "nchw")
    _, nhwc = _digits(tmp_path, "nhwc", channels_last=True)
    assert nhwc["plan"]["speed"] == ["channels_last", "foreach adamw"]
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
    assert str(error.value) == line
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_an_unknown_optimizer_impl_names_the_choices():
    from accel_train import parse_config

    with pytest.raises(UserError, match="optimizer_impl"):
        parse_config(["--optimizer-impl", "turbo"])
