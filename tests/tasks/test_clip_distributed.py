"""CLIP under a real `accelerate launch` with 2 processes (cpu_ddp.yaml) against one process: the all-gather
contrastive loss and its gradients equal the whole batch's, retrieval over the validation set counts every pair
once, and a short training run ends with the weights of one process."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from support import SCRIPTS, check, launch

import clip_ddp  # noqa: E402

pytestmark = pytest.mark.multiprocess


def test_clip_with_two_processes_equals_one_process(tmp_path):
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    clip_ddp.main(str(one), eval_batch=32, train_batch=32, run_dir=str(tmp_path / "run1"))  # in this process
    check(launch([str(SCRIPTS / "clip_ddp.py"), str(two), "16", "16", str(tmp_path / "run2")]))
    single, ddp = json.loads(one.read_text()), json.loads(two.read_text())
    assert single["processes"] == 1 and ddp["processes"] == 2

    # each process's 8 pairs contrasted with all 16 through the all-gather: CLIP's loss over the 16 in one process
    gathered = ddp["gathered"]
    assert gathered["loss_diff"] <= 1e-6 and gathered["reference_loss"] > 1.0
    assert gathered["grad_diff"] <= 1e-6 * max(1.0, gathered["grad_scale"])

    # retrieval and zero-shot over the 360 validation pairs (2 x 16 per batch pads the last one): the same values
    assert single["eval"]["samples"] == ddp["eval"]["samples"] == 360
    for k in (1, 5, 10):
        for direction in ("i2t", "t2i"):
            key = f"{direction}_recall@{k}"
            assert ddp["eval"][key] == pytest.approx(single["eval"][key], abs=1e-12), key
    assert ddp["eval"]["zero_shot_accuracy"] == pytest.approx(single["eval"]["zero_shot_accuracy"], abs=1e-12)
    assert 0.0 < single["eval"]["i2t_recall@1"] < 1.0

    # 16 AdamW steps: 2 processes x 16 pairs with gathered negatives == 1 process x 32 pairs with CLIP's own loss
    assert single["fit"]["steps"] == ddp["fit"]["steps"] == 16
    assert ddp["fit"]["final_train"]["loss"] == pytest.approx(single["fit"]["final_train"]["loss"], abs=1e-5)
    reference = load_file(tmp_path / "run1/model.safetensors")
    distributed = load_file(tmp_path / "run2/model.safetensors")
    assert reference.keys() == distributed.keys()
    # Attention key biases get no gradient in exact arithmetic (softmax ignores a shift shared by all keys): Adam
    # turns their float-rounding gradients into steps of up to lr, so they are left out.
    keys = [key for key in reference if not key.endswith("k_proj.bias")]
    assert len(keys) == len(reference) - 2
    worst = max(float((distributed[key] - reference[key]).abs().max()) for key in keys)
    assert worst <= 1e-6, worst
