"""Text in one process: the real MiniLM finetuned end to end, token-level loss under accumulation, perplexity,
streaming, labels, the command-line jobs, and every bad input as one clear error."""

from __future__ import annotations

import math
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from accel_train import TrainConfig, UserError, fit, read_summary
from accel_train.cli import main as cli_main
from accel_train.tasks.text import TextClassificationOptions, classification_data
from accel_train.tasks.text_data import load_pretrained
from support import REPO
from support.text import (MINILM, TOPICS, build_lm, lm_initial_weights, lm_run, relative_update_difference,
                          tiny_bert, uneven_lm_folder, write_csv)


EXAMPLES = REPO / "examples"
QUIET = ["--progress", "false"]


def run_example(name: str, argv: list[str]) -> dict:
    return runpy.run_path(str(EXAMPLES / name), run_name="example")["main"](argv)


@pytest.fixture(scope="module")
def bert(tmp_path_factory) -> Path:
    return tiny_bert(tmp_path_factory.mktemp("bert") / "model")


@pytest.fixture(scope="module")
def lm_data(tmp_path_factory) -> Path:
    return uneven_lm_folder(tmp_path_factory.mktemp("lm") / "data")


@pytest.fixture
def cache(tmp_path) -> list[str]:
    return ["--job.cache-dir", str(tmp_path / "cache")]


# -- the real pretrained model, end to end -------------------------------------------------------------------------

def test_minilm_finetune_beats_bag_of_words_and_reloads(tmp_path, cache):
    """MiniLM-L6 on the topic sentences (validation topic words never seen in training): far above a
    bag-of-words logistic regression on the same split; the saved model reloads and predicts the same labels.

    One thread: on 2 cores a second busy-waiting thread slows MiniLM down several times whenever the other core
    is busy."""
    import pandas as pd
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    train, val = pd.read_csv(TOPICS / "train.csv"), pd.read_csv(TOPICS / "validation.csv")
    words = CountVectorizer().fit(train.text)
    baseline = LogisticRegression(max_iter=2000).fit(words.transform(train.text), train.label)
    baseline_accuracy = float((baseline.predict(words.transform(val.text)) == val.label).mean())

    out = tmp_path / "minilm"
    summary = run_example("finetune_bert.py", [
        "--job.model", str(MINILM), "--job.train-file", str(TOPICS / "train.csv"), "--job.validation-file",
        str(TOPICS / "validation.csv"), "--epochs", "1", "--batch-size", "16", "--lr", "1e-4", "--warmup-steps", "2",
        "--job.max-length", "32", "--num-threads", "1", "--output-dir", str(out), *QUIET, *cache])
    accuracy = summary["final_val"]["accuracy"]
    print(f"MiniLM validation accuracy {accuracy:.3f}, bag-of-words baseline {baseline_accuracy:.3f}")
    assert baseline_accuracy < 0.5 and accuracy >= 0.85 and accuracy >= baseline_accuracy + 0.4
    assert summary["final_val"]["samples"] == 150 and summary["steps"] == 19
    assert {"f1", "precision/sports", "recall/weather"} <= summary["final_val"].keys()

    model = AutoModelForSequenceClassification.from_pretrained(out / "model").eval()
    tokenizer = AutoTokenizer.from_pretrained(out / "model")
    assert model.config.id2label == {0: "food", 1: "music", 2: "sports", 3: "technology", 4: "weather"}
    with torch.no_grad():
        logits = model(**tokenizer(list(val.text), padding=True, truncation=True, max_length=32,
                                   return_tensors="pt")).logits
    predicted = [model.config.id2label[i] for i in logits.argmax(1).tolist()]
    assert sum(p == t for p, t in zip(predicted, val.label)) / len(val) == pytest.approx(accuracy, abs=1e-9)
    classify = pipeline("text-classification", model=str(out / "model"), device=-1)
    assert [r["label"] for r in classify(list(val.text), batch_size=50, truncation=True, max_length=32)] == predicted


# -- language models -------------------------------------------------------------------------------------------------

def test_token_loss_is_the_same_for_any_accumulation(lm_data, tmp_path):
    """Accumulation 4 x batch 2 == batch 8 in one step (4 SGD steps, texts of 2 to 61 tokens): the weight updates
    agree within 1e-6 relative, where the mean of per-micro-batch means differs by far more."""
    initial = lm_initial_weights(lm_data)
    whole = lm_run(lm_data, tmp_path / "whole", batch_size=8)
    accumulated = lm_run(lm_data, tmp_path / "acc", batch_size=2, grad_accum=4)
    diff = relative_update_difference(accumulated, whole, initial)
    print(f"largest relative difference of the weight updates: {diff:.2e}")
    assert diff <= 1e-6

    # the naive recipe (mean loss per micro-batch, averaged over the window) gives another gradient
    model, train, _, data = build_lm(lm_data)
    batch = data.collator([train[i] for i in range(8)])
    exact, naive = _gradient(model, data.task, [batch]), _gradient(model, data.task, _halves(batch, 4))
    naive_diff = float((naive - exact).norm() / exact.norm())
    print(f"the mean of micro-batch means: relative gradient difference {naive_diff:.2f}")
    assert naive_diff > 0.05


def _halves(batch: dict, parts: int) -> list[dict]:
    return [{k: v[i::parts] for k, v in batch.items()} for i in range(parts)]


def _gradient(model, task, micro_batches: list[dict]) -> torch.Tensor:
    """Gradient of the mean over micro-batches of each micro-batch's mean token loss."""
    model.zero_grad()
    for batch in micro_batches:
        out = task(model, batch)
        (out.losses.sum() / out.counts.sum() / len(micro_batches)).backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def test_perplexity_is_exp_of_the_token_weighted_validation_loss(tmp_path, lm_data, cache):
    """The LM example, packed blocks: val perplexity == exp(val loss), and that loss is the mean over every target
    token of the validation set, recomputed here from the saved model."""
    from transformers import AutoModelForCausalLM

    from accel_train.tasks.causal_lm import CausalLMOptions, causal_lm_data

    out = tmp_path / "lm"
    summary = run_example("train_causal_lm.py", [
        "--job.model", str(lm_data), "--job.model-config", str(lm_data), "--job.train-file", str(lm_data / "train.csv"),
        "--job.validation-file", str(lm_data / "validation.csv"), "--job.block-size", "16", "--epochs", "2",
        "--batch-size", "4", "--eval-batch-size", "3", "--output-dir", str(out), *QUIET, *cache])
    val = summary["final_val"]
    assert val["perplexity"] == pytest.approx(math.exp(val["loss"]), rel=1e-12)
    assert summary["final_train"]["perplexity"] < 60 > val["perplexity"]  # 21-token vocabulary: chance is 21

    model = AutoModelForCausalLM.from_pretrained(out / "model").eval()
    data = causal_lm_data(CausalLMOptions(model=str(out / "model"), train_file=str(lm_data / "train.csv"),
                                          validation_file=str(lm_data / "validation.csv"), block_size=16,
                                          cache_dir=cache[1]))
    ids = torch.tensor(data.eval["input_ids"])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[:, :-1]
    tokens = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    assert val["samples"] == len(ids) and val["loss"] == pytest.approx(float(tokens), rel=1e-5)


def test_streaming_lm_trains_with_max_steps_and_counts_every_validation_text(tmp_path, lm_data, cache):
    """A streamed corpus (one padded text a sequence): --max-steps ends the run, the training stream repeats,
    and validation counts each of its 5 texts once."""
    out = tmp_path / "stream"
    summary = run_example("train_causal_lm.py", [
        "--job.model", str(lm_data), "--job.model-config", str(lm_data), "--job.train-file", str(lm_data / "train.csv"),
        "--job.validation-file", str(lm_data / "validation.csv"), "--job.streaming", "true", "--job.packing", "false",
        "--job.block-size", "64", "--batch-size", "4", "--max-steps", "9", "--output-dir", str(out), *QUIET, *cache])
    assert summary["steps"] == 9 and summary["samples"] == 36  # 9 steps x 4 texts: 1.5 passes over the 24
    assert summary["final_val"]["samples"] == 5 and summary["epochs"] == 1
    with pytest.raises(UserError, match="--max-steps"):
        run_example("train_causal_lm.py", [
            "--job.model", str(lm_data), "--job.model-config", str(lm_data),
            "--job.train-file", str(lm_data / "train.csv"),
            "--job.validation-file", str(lm_data / "validation.csv"), "--job.streaming", "true",
            "--output-dir", str(tmp_path / "no-steps"), *QUIET, *cache])


# -- classification data -------------------------------------------------------------------------------------------

def _data(tmp_path: Path, bert: Path, train: list[dict], val: list[dict], **options) -> object:
    return classification_data(TextClassificationOptions(
        model=str(bert), train_file=str(write_csv(tmp_path / "train.csv", train)),
        validation_file=str(write_csv(tmp_path / "val.csv", val)), cache_dir=str(tmp_path / "cache"), **options))


def test_labels_are_mapped_once_and_pairs_are_tokenized_as_pairs(tmp_path, bert):
    rows = [{"a": f"first {i}", "b": f"second {i}", "y": y} for i, y in enumerate([10, 2, 1, 2, 10, 1])]
    data = _data(tmp_path, bert, rows, rows[:3], text_column="a", text_pair_column="b", label_column="y")
    assert data.labels == ["1", "2", "10"]  # integers sorted by value
    assert data.label_config()["label2id"] == {"1": 0, "2": 1, "10": 2}
    assert data.train["labels"] == [2, 1, 0, 1, 2, 0] and data.eval["labels"] == [2, 1, 0]
    assert set(data.train[0]["token_type_ids"]) == {0, 1}  # the second text is segment 1

    strings = [{"text": t, "label": y} for t, y in [("x", "pos"), ("y", "neg"), ("z", "neutral"), ("w", "pos")]]
    data = _data(tmp_path / "s", bert, strings, strings[:2])
    assert data.labels == ["neg", "neutral", "pos"] and data.train["labels"] == [2, 0, 1, 2]

    folder = _dataset_folder(tmp_path / "hub")  # a dataset folder, read as --dataset reads a Hub dataset
    hub = classification_data(TextClassificationOptions(model=str(bert), dataset=str(folder),
                                                        cache_dir=str(tmp_path / "cache")))
    assert hub.labels == ["negative", "positive"] and hub.train["labels"] == [1, 0, 1]  # ClassLabel names and ids
    assert hub.eval["labels"] == [0, 1]


def _dataset_folder(folder: Path) -> Path:
    """data/train-*.parquet and data/validation-*.parquet with a ClassLabel column, as on the Hub."""
    from datasets import ClassLabel, Dataset

    (folder / "data").mkdir(parents=True)
    for split, labels in (("train", [1, 0, 1]), ("validation", [0, 1])):
        data = Dataset.from_dict({"sentence": ["good", "bad", "fine"][: len(labels)], "label": labels})
        data = data.cast_column("label", ClassLabel(names=["negative", "positive"]))
        data.to_parquet(str(folder / "data" / f"{split}-00000-of-00001.parquet"))
    return folder


def test_bad_text_inputs_are_clear_errors(tmp_path, bert):
    good = [{"text": "a", "label": "x"}, {"text": "b", "label": "y"}]
    with pytest.raises(UserError, match=r"no text column `body`; its columns are: text, label"):
        _data(tmp_path / "a", bert, good, good, text_column="body")
    with pytest.raises(UserError, match=r"validation data has no label column `label`; its columns are: text, y"):
        _data(tmp_path / "b", bert, good, [{"text": "a", "y": "x"}])
    with pytest.raises(UserError, match=r"train data has no label in column `label` at row 1 \(empty or NaN\)"):
        _data(tmp_path / "c", bert, [{"text": "a", "label": 1}, {"text": "b", "label": None}, {"text": "c", "label": 2}],
              good)
    with pytest.raises(UserError, match=r"validation data has label\(s\) z that the training data does not have"):
        _data(tmp_path / "d", bert, good, [{"text": "a", "label": "z"}])
    with pytest.raises(UserError, match=r"no text in column `text` at row 0"):
        _data(tmp_path / "e", bert, [{"text": None, "label": "x"}, *good], good)
    with pytest.raises(UserError, match=r"the number 0.5: classification needs class labels"):
        _data(tmp_path / "f", bert, [{"text": "a", "label": 0.5}, {"text": "b", "label": 1.5}], good)
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "header.csv").write_text("text,label\n")
    for name, message in (("empty.csv", "is empty"), ("header.csv", "has no rows"), ("none.csv", "does not exist")):
        with pytest.raises(UserError, match=message):
            classification_data(TextClassificationOptions(model=str(bert), train_file=str(tmp_path / name),
                                                          cache_dir=str(tmp_path / "cache")))
    with pytest.raises(UserError, match="no training data: give --job.train-file"):
        classification_data(TextClassificationOptions(model=str(bert)))


def test_a_model_that_does_not_take_the_batch_keys_is_a_clear_error(tmp_path, bert):
    """BERT's tokenizer makes token_type_ids; DistilBERT has none (and transformers would silently ignore them)."""
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    rows = [{"text": f"text {i}", "label": i % 2} for i in range(8)]
    data = _data(tmp_path, bert, rows, rows)
    model = DistilBertForSequenceClassification(DistilBertConfig(vocab_size=30522, dim=16, n_layers=1, n_heads=2,
                                                                 hidden_dim=32, **data.label_config()))
    with pytest.raises(UserError, match=r"does not take the batch key\(s\) token_type_ids; its forward takes "
                                        r"input_ids, attention_mask"):
        fit(model, data.train, data.eval, task=data.task, collate_fn=data.collator,
            config=TrainConfig(output_dir=str(tmp_path / "run"), epochs=1, progress=False))


def test_remote_code_runs_only_when_asked_for():
    seen = []

    class Recorder:
        __name__ = "Recorder"

        @staticmethod
        def from_pretrained(name, **kwargs):
            seen.append(kwargs)

    load_pretrained(Recorder, "m")
    load_pretrained(Recorder, "m", trust_remote_code=True, num_labels=3)
    assert seen == [{}, {"trust_remote_code": True, "num_labels": 3}]
    assert TextClassificationOptions().trust_remote_code is False


# -- the command line ----------------------------------------------------------------------------------------------

def test_text_jobs_from_the_command_line(tmp_path, bert, lm_data):
    """bert_topics.yaml and lm_topics.yaml with local models; the tokenizer lands next to the model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "bert"
    assert cli_main(["train", "--config", str(EXAMPLES / "configs/bert_topics.yaml"), "--job.model", str(bert),
                     "--max-steps", "3", "--output-dir", str(out), "--job.cache_dir", str(tmp_path / "c"), *QUIET]) == 0
    summary = read_summary(out)
    assert summary["steps"] == 3 and summary["final_val"]["samples"] == 150
    assert AutoTokenizer.from_pretrained(out / "model")("a b")["input_ids"][0] == 101  # MiniLM's [CLS]
    out = tmp_path / "lm"
    assert cli_main(["train", "--config", str(EXAMPLES / "configs/lm_topics.yaml"), "--job.model_config",
                     str(lm_data), "--job.tokenizer", str(lm_data), "--job.config_overrides", "{}",
                     "--job.train_file", str(lm_data / "train.csv"), "--job.validation_file",
                     str(lm_data / "validation.csv"), "--job.block_size", "16", "--epochs", "1",
                     "--output-dir", str(out), "--job.cache_dir", str(tmp_path / "c"), *QUIET]) == 0
    val = read_summary(out)["final_val"]
    assert val["perplexity"] == pytest.approx(math.exp(val["loss"]), rel=1e-12)
    assert val["perplexity"] == pytest.approx(22.2112, rel=1e-5)  # measured: 1 epoch of the tiny GPT-2, seed 0
    assert AutoModelForCausalLM.from_pretrained(out / "model").config.n_layer == 2
    config = __import__("yaml").safe_load((out / "config.yaml").read_text())
    assert config["options"]["job"]["class_path"] == "accel_train.tasks.causal_lm.CausalLM"


def test_a_bad_text_job_exits_with_one_clear_line(tmp_path, bert, capsys):
    assert cli_main(["train", "--config", str(EXAMPLES / "configs/bert_topics.yaml"), "--job.model", str(bert),
                     "--job.text_column", "body", "--output-dir", str(tmp_path / "run"),
                     "--job.cache_dir", str(tmp_path / "c")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "accel_train: error: the train data has no text column `body`; its columns are: text, label. "
        "Set --job.text-column to one of them.")


def test_every_text_job_file_parses_and_the_core_needs_no_text_packages():
    from accel_train.config import parse_config
    from accel_train.job import Job

    for name in ("bert_sst2", "bert_topics", "lm_wikitext", "lm_topics"):
        cfg, job = parse_config(["--config", str(EXAMPLES / f"configs/{name}.yaml")], options=Job)
        assert type(job).__name__ in ("TextClassification", "CausalLM") and cfg.epochs >= 1
    code = ("import sys; sys.modules['datasets'] = sys.modules['transformers'] = None; "
            "import accel_train, accel_train.fit, accel_train.job, accel_train.tasks.text, accel_train.tasks.causal_lm")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0
