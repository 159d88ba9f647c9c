"""Text classification: a pretrained BERT-style model finetuned to classify texts or text pairs.

    data = classification_data(opts, seed)         # tokenized splits, label <-> id map, collator, task
    model = load_pretrained(AutoModelForSequenceClassification, opts.model, **data.label_config())

Labels may be strings or integers: the label <-> id map is derived once from the training split (a `ClassLabel`
feature keeps its own names), checked against the validation split, and goes into the model's config
(`data.label_config()`). Metrics: accuracy, macro-F1, per-class precision and recall.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Any

from ..errors import UserError
from ..job import Job, Parts
from .text_data import (TextData, TextSource, TextTask, check_texts, columns_of, load_pretrained, load_texts,
    load_tokenizer, per_process, text_column)


@dataclass
class TextClassificationOptions(TextSource):
    """A sequence classifier finetuned on labelled texts (or text pairs)."""

    model: str = "bert-base-uncased"  # Hub name or folder of a pretrained model
    text_pair_column: str | None = None  # second text of each example (sentence pairs), if any
    label_column: str = "label"  # class of each example: strings or integers
    labels: list[str] | None = None  # the classes in id order; default: derived from the training data
    max_length: int = 128  # tokens per example; longer texts are truncated


# -- classification ------------------------------------------------------------------------------------------------

def classification_data(opts: TextClassificationOptions, seed: int = 0) -> TextData:
    """Tokenized training and validation splits for a sequence classifier, with their label map and collator."""
    from transformers import DataCollatorWithPadding

    tokenizer = load_tokenizer(opts.tokenizer or opts.model, opts.trust_remote_code)
    train, val = load_texts(opts, seed)
    text = text_column(train, opts.text_column, "train")
    for data, split in ((train, "train"), (val, "validation")):
        text_column(data, text, split)
        if opts.text_pair_column:
            text_column(data, opts.text_pair_column, split, "text pair")
        text_column(data, opts.label_column, split, "label")
    labels, ids = derive_labels(train, val, opts.label_column, opts.labels)
    splits = []
    for data, split in ((train, "train"), (val, "validation")):
        encode = partial(_encode, tokenizer=tokenizer, columns=(text, opts.text_pair_column, opts.label_column),
                         ids=ids, max_length=opts.max_length, split=split)
        data = data.map(encode, batched=True, with_indices=True, remove_columns=columns_of(data))
        splits.append(per_process(data, train=split == "train", seed=seed) if opts.streaming else data)
    # Cross-entropy per example from the logits: the model's own single-label loss, but not a batch mean, which
    # cannot be split by example (a padded last batch under DDP would count its repeated examples).
    task = TextTask(loss="cross_entropy", metrics=("accuracy", "f1", "precision", "recall"), class_names=labels)
    return TextData(splits[0], splits[1], tokenizer, DataCollatorWithPadding(tokenizer), task, list(labels))


def _encode(batch: dict, indices: list[int], *, tokenizer, columns: tuple, ids: dict[str, int], max_length: int,
            split: str) -> dict:
    text, pair, label = columns
    check_texts(batch[text], indices, text, split)
    if pair:
        check_texts(batch[pair], indices, pair, split)
    encoded = tokenizer(batch[text], batch[pair] if pair else None, truncation=True, max_length=max_length)
    encoded["labels"] = [_label_id(value, ids, label, split, row) for value, row in zip(batch[label], indices)]
    return encoded


def _label_name(value: Any) -> str | None:
    """A label as the class name it stands for; None for a missing one (None or NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, float):
        if not value.is_integer():
            raise UserError(f"the label column holds the number {value}: classification needs class labels "
                            "(strings or integers), not continuous values.")
        value = int(value)
    return str(value)


def _label_id(value: Any, ids: dict[str, int], column: str, split: str, row: int) -> int:
    name = _label_name(value)
    if name is None:
        raise UserError(f"the {split} data has no label in column `{column}` at row {row} (empty or NaN). Fill or "
                        "drop the rows without a label.")
    if name not in ids:
        raise UserError(f"the {split} data has the label `{name}` (row {row}), which the training data does not "
                        f"have (its labels: {', '.join(ids)}). Drop those rows, or add examples of the label to the "
                        "training data (or list every class with --job.labels).")
    return ids[name]


def derive_labels(train: Any, val: Any, column: str, given: list[str] | None = None) -> tuple[list[str], dict[str, int]]:
    """The class names in id order, and the id of each label as the data writes it.

    A `ClassLabel` column keeps its own names and ids; `given` names fix the order; otherwise the training labels,
    sorted (integers by value), are the classes. Missing labels (None or NaN) and validation labels the training
    data lacks are errors (for a stream, when the row is read).
    """
    from datasets import ClassLabel

    feature = (train.features or {}).get(column)
    if isinstance(feature, ClassLabel):
        return list(feature.names), {str(i): i for i in range(feature.num_classes)}
    if given:
        return list(given), {name: i for i, name in enumerate(given)}
    if hasattr(train, "unique"):
        values = train.unique(column)
    else:  # a stream: one pass over its label column
        values = list({row[column] for row in train.select_columns([column])})
    if None in {_label_name(v) for v in values}:
        _missing_label(train, column, "train")
    ordered = sorted(values, key=lambda v: (0, float(v), "") if isinstance(v, (int, float)) else (1, 0.0, str(v)))
    labels = list(dict.fromkeys(_label_name(v) for v in ordered))
    if len(labels) < 2:
        raise UserError(f"the training data has only one label ({labels[0]}): classification needs two or more.")
    if hasattr(val, "unique"):
        val_names = {_label_name(v) for v in val.unique(column)}
        if None in val_names:
            _missing_label(val, column, "validation")
        unseen = sorted(val_names - set(labels))
        if unseen:
            raise UserError(f"the validation data has label(s) {', '.join(unseen)} that the training data does not "
                            f"have (its labels: {', '.join(labels)}). Drop those rows, or add examples of them to "
                            "the training data (or list every class with --job.labels).")
    return labels, {name: i for i, name in enumerate(labels)}


def _missing_label(data: Any, column: str, split: str) -> None:
    row = next(i for i, v in enumerate(data[column]) if _label_name(v) is None)
    _label_id(None, {}, column, split, row)


@dataclass
class TextClassification(TextClassificationOptions, Job):
    """A pretrained BERT-style model finetuned to classify texts or text pairs; accuracy, macro-F1, per-class
    precision and recall. The tokenizer is saved beside the model in `<run>/model/`."""

    def build(self, seed: int) -> Parts:
        from transformers import AutoModelForSequenceClassification

        data = classification_data(self, seed)
        model = load_pretrained(AutoModelForSequenceClassification, self.model, self.trust_remote_code,
                                ignore_mismatched_sizes=True, **data.label_config())
        return Parts(model, data.train, data.eval, data.task, data.collator, processor=data.tokenizer)
