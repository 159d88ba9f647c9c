"""Text in, tokenized datasets out: files or Hub datasets, labels, tokenization, and the text tasks' shared checks.

    train, val = load_texts(opts, seed)            # CSV / TSV / JSON / JSON Lines / Parquet / text files, or a Hub
                                                   # dataset (`datasets.load_dataset`), map-style or streaming
    data = classification_data(opts, seed)         # tokenized splits, label <-> id map, collator, task

Labels may be strings or integers: the label <-> id map is derived once from the training split (a `ClassLabel`
feature keeps its own names), checked against the validation split, and goes into the model's config
(`data.label_config()`). A streaming split is cut into one part per process (`split_dataset_by_node`), which the
loop reads without splitting it again (`accel_train.data.ProcessShard`). The causal-LM data and task are in
`causal_lm.py`. `datasets` and `transformers` are imported in these modules only: the core never needs them.
"""

from __future__ import annotations

import inspect
import math
import os
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from .data import ProcessShard
from .errors import UserError, install_excepthook
from .task import Task

FORMATS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet", ".txt": "text"}
TEXT_COLUMNS = ("text", "sentence", "content", "review")  # tried in this order when --text-column is not given
SHUFFLE_BUFFER = 10_000  # examples a training stream shuffles among


@dataclass
class TextSource:
    """Where the texts come from, and the model and tokenizer that read them."""

    dataset: str | None = None  # Hub dataset name (glue) or a local dataset folder, read by datasets.load_dataset
    subset: str | None = None  # the dataset's configuration, e.g. sst2 of glue
    train_file: str | None = None  # .csv, .tsv, .json, .jsonl, .parquet or .txt (one text a line), instead of --dataset
    validation_file: str | None = None  # same formats; default: the dataset's validation split, else a held-out share
    train_split: str = "train"  # split of --dataset to train on
    validation_split: str = "validation"  # split of --dataset to validate on (validation_matched for glue/mnli)
    val_fraction: float = 0.1  # share of the training data held out when there is no validation split or file
    streaming: bool = False  # stream the data (large corpora): each process reads its own part; needs --max-steps
    cache_dir: str | None = None  # datasets' cache for downloads and tokenized data; default ~/.cache/huggingface
    text_column: str | None = None  # default: the first of text, sentence, content, review that exists
    tokenizer: str | None = None  # Hub name or folder; default: the model's own
    trust_remote_code: bool = False  # run Python code shipped with the model; only for models whose code you trust


@dataclass
class TextClassificationOptions(TextSource):
    """A sequence classifier finetuned on labelled texts (or text pairs)."""

    model: str = "bert-base-uncased"  # Hub name or folder of a pretrained model
    text_pair_column: str | None = None  # second text of each example (sentence pairs), if any
    label_column: str = "label"  # class of each example: strings or integers
    labels: list[str] | None = None  # the classes in id order; default: derived from the training data
    max_length: int = 128  # tokens per example; longer texts are truncated


@dataclass
class TextData:
    """What the examples and jobs hand to `fit()`."""

    train: Any
    eval: Any
    tokenizer: Any
    collator: Any
    task: Task
    labels: list[str] = field(default_factory=list)

    def label_config(self) -> dict[str, Any]:
        """`num_labels`, `id2label` and `label2id` for the model's config (saved with `save_pretrained`)."""
        return {"num_labels": len(self.labels), "id2label": dict(enumerate(self.labels)),
                "label2id": {name: i for i, name in enumerate(self.labels)}}


# -- loading -------------------------------------------------------------------------------------------------------

def load_texts(src: TextSource, seed: int) -> tuple[Any, Any]:
    """The raw training and validation splits: map-style `datasets.Dataset`s, or `IterableDataset`s when streaming."""
    if not (src.train_file or src.dataset):
        raise UserError("no training data: give --train-file (a CSV, JSON, Parquet or text file) or --dataset "
                        "(a Hugging Face Hub dataset name or a local dataset folder).")
    if src.train_file:
        train, val = _load_file(src.train_file, src, "train"), None
    else:
        splits = _load_dataset(src)
        if src.train_split not in splits:
            raise UserError(f"the dataset {src.dataset} has no split `{src.train_split}`; it has "
                            f"{', '.join(splits)}. Set --train-split.")
        train, val = splits[src.train_split], splits.get(src.validation_split)
        _check_rows(train, f"the {src.train_split} split of {src.dataset}")
    if src.validation_file:
        val = _load_file(src.validation_file, src, "validation")
    if val is None:
        if src.streaming:
            raise UserError("a streamed dataset needs its own validation data: give --validation-file, or "
                            "--validation-split naming a split of the dataset.")
        if not 0.0 < src.val_fraction < 1.0:
            raise UserError(f"val_fraction must be between 0 and 1 (got {src.val_fraction}).")
        held_out = train.train_test_split(test_size=src.val_fraction, seed=seed)
        train, val = held_out["train"], held_out["test"]
    return train, val


def _load_file(path: str, src: TextSource, split: str) -> Any:
    import datasets

    file = Path(path)
    kind = FORMATS.get(file.suffix.lower())
    if not file.is_file():
        raise UserError(f"the {split} file {path} does not exist.")
    if kind is None:
        raise UserError(f"cannot read {path}: give a {', '.join(FORMATS)} file.")
    if file.stat().st_size == 0:
        raise UserError(f"the {split} file {path} is empty.")
    options = {"delimiter": "\t"} if file.suffix.lower() == ".tsv" else {}
    try:
        data = datasets.load_dataset(kind, data_files=str(file), split="train", streaming=src.streaming,
                                     cache_dir=src.cache_dir, **options)
    except (ValueError, datasets.exceptions.DatasetGenerationError) as error:
        if "corresponds to no data" in str(error):
            raise UserError(f"the {split} file {path} has no rows.") from None
        cause = error.__cause__ or error.__context__ or error
        raise UserError(f"cannot read the {split} file {path}: {type(cause).__name__}: {_first_line(cause)}") from None
    _check_rows(data, f"the {split} file {path}")
    return data


def _load_dataset(src: TextSource) -> Any:
    import datasets

    try:
        return datasets.load_dataset(src.dataset, src.subset, streaming=src.streaming, cache_dir=src.cache_dir)
    except (OSError, ValueError, ConnectionError, datasets.exceptions.DatasetNotFoundError) as error:
        subset = f" (subset {src.subset})" if src.subset else ""
        raise UserError(f"cannot load the dataset {src.dataset}{subset}: {_first_line(error)}. Check --dataset and "
                        "--subset, and the network (offline, give --train-file instead).") from None


def _check_rows(data: Any, what: str) -> None:
    if hasattr(data, "__len__") and len(data) == 0:
        raise UserError(f"{what} has no rows.")
    if not hasattr(data, "__len__") and next(iter(data.take(1)), None) is None:
        raise UserError(f"{what} has no rows.")


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [""])[0][:300].rstrip(".")


def columns_of(data: Any) -> list[str]:
    """Column names of a split; a stream whose files do not declare them shows its first row."""
    if data.column_names is not None:
        return list(data.column_names)
    return list(next(iter(data.take(1))).keys())


def text_column(data: Any, name: str | None, split: str, what: str = "text") -> str:
    """`name`, or the first of TEXT_COLUMNS the data has; a clear error listing the columns otherwise."""
    columns = columns_of(data)
    found = name or next((c for c in TEXT_COLUMNS if c in columns), None)
    if found not in columns:
        asked = f"no {what} column `{name}`" if name else f"none of the usual {what} columns ({', '.join(TEXT_COLUMNS)})"
        raise UserError(f"the {split} data has {asked}; its columns are: {', '.join(columns)}. Set "
                        f"--{what.replace(' ', '-')}-column to one of them.")
    return found


def check_texts(texts: list, indices: list[int], column: str, split: str) -> None:
    """Every example needs its text: an empty cell is an error, not a silent empty string."""
    for value, row in zip(texts, indices):
        if not isinstance(value, str):
            raise UserError(f"the {split} data has no text in column `{column}` at row {row} (found {value!r}). "
                            "Fill or drop the rows without text.")


def load_tokenizer(name: str, trust_remote_code: bool = False) -> Any:
    """`AutoTokenizer.from_pretrained(name)`, with remote code only when asked for and a clear error."""
    from transformers import AutoTokenizer

    return load_pretrained(AutoTokenizer, name, trust_remote_code)


def load_pretrained(kind: Any, name: str, trust_remote_code: bool = False, **kwargs: Any) -> Any:
    """`kind.from_pretrained(name, **kwargs)` (a transformers Auto class); `trust_remote_code` is passed on only
    when the user gave it, and a missing or unreadable model becomes one clear message."""
    remote = {"trust_remote_code": True} if trust_remote_code else {}
    try:
        return kind.from_pretrained(name, **remote, **kwargs)
    except (OSError, ValueError) as error:
        raise UserError(f"cannot load `{name}` with {kind.__name__}: {_first_line(error)}. Give a Hub name (needs "
                        "the network the first time) or a local folder holding config.json.") from None


def per_process(data: Any, *, train: bool, seed: int) -> ProcessShard:
    """This process's part of a stream (`split_dataset_by_node`); a training part is shuffled and repeats."""
    from datasets.distributed import split_dataset_by_node

    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if train:
        data = data.shuffle(seed=seed, buffer_size=SHUFFLE_BUFFER)
    return ProcessShard(split_dataset_by_node(data, rank=rank, world_size=world), repeat=train)


# -- classification ------------------------------------------------------------------------------------------------

def classification_data(opts: TextClassificationOptions, seed: int = 0) -> TextData:
    """Tokenized training and validation splits for a sequence classifier, with their label map and collator."""
    from transformers import DataCollatorWithPadding

    install_excepthook()  # a script's data mistake is one line, as in fit()
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
                        "training data (or list every class with --labels).")
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
                            "the training data (or list every class with --labels).")
    return labels, {name: i for i, name in enumerate(labels)}


def _missing_label(data: Any, column: str, split: str) -> None:
    row = next(i for i, v in enumerate(data[column]) if _label_name(v) is None)
    _label_id(None, {}, column, split, row)


# -- the model's side ----------------------------------------------------------------------------------------------

def check_batch_keys(model: Any, keys: Any) -> None:
    """The model's forward must take every key of the batch by name.

    transformers models accept unknown keyword arguments and ignore them, so a tokenizer that makes, say,
    token_type_ids for a model without them would train silently on less than the data holds.
    """
    module = getattr(model, "module", model)  # under DDP, the wrapped model
    forward = getattr(module, "_original_forward", None) or module.forward  # before Accelerate's autocast wrapper
    params = inspect.signature(forward).parameters.values()
    named = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = [key for key in keys if key not in named]
    if named and unknown:
        raise UserError(f"the model ({type(module).__name__}) does not take the batch key(s) {', '.join(unknown)}; "
                        f"its forward takes {', '.join(named)}. Use the model's own tokenizer (--tokenizer), or a "
                        "model made for these inputs.")


class TextTask(Task):
    """A Task for Hugging Face text models: the batch (less `labels`, when the task computes the loss) is called as
    `model(**batch)`, after a one-time check that the model takes every key of it."""

    def forward(self, model, batch):
        if not self.checked:
            check_batch_keys(model, [key for key in batch if key != "labels" or self.loss_fn is None])
        return super().forward(model, batch)
