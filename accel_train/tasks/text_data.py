"""Texts in, for the text families (`tasks.text`, `tasks.causal_lm`): files or Hub datasets, their columns, the
pretrained model and tokenizer, and the check that a model takes every key of a tokenized batch.

    train, val = load_texts(opts, seed)            # CSV / TSV / JSON / JSON Lines / Parquet / text files, or a Hub
                                                   # dataset (`datasets.load_dataset`), map-style or streaming

A streaming split is cut into one part per process (`split_dataset_by_node`), which the loop reads without
splitting it again (`accel_train.data.ProcessShard`). `datasets` and `transformers` are imported in the task
modules only: the core never needs them.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data import ProcessShard
from ..errors import UserError
from ..internals import original_forward
from ..task import Task

FORMATS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet", ".txt": "text"}
TEXT_COLUMNS = ("text", "sentence", "content", "review")  # tried in this order when --text-column is not given
SHUFFLE_BUFFER = 10_000  # examples a training stream shuffles among


@dataclass
class TextSource:
    """Where the texts come from, and the model and tokenizer that read them."""

    dataset: str | None = None  # Hub dataset name (glue) or a local dataset folder, read by datasets.load_dataset
    subset: str | None = None  # the dataset's configuration, e.g. sst2 of glue
    train_file: str | None = None  # .csv, .tsv, .json, .jsonl, .parquet or .txt (one text a line); or --job.dataset
    validation_file: str | None = None  # same formats; default: the dataset's validation split, else a held-out share
    train_split: str = "train"  # split of --job.dataset to train on
    validation_split: str = "validation"  # split of --job.dataset to validate on (validation_matched for glue/mnli)
    val_fraction: float = 0.1  # share of the training data held out when there is no validation split or file
    streaming: bool = False  # stream the data (large corpora): each process reads its own part; needs --max-steps
    cache_dir: str | None = None  # datasets' cache for downloads and tokenized data; default ~/.cache/huggingface
    text_column: str | None = None  # default: the first of text, sentence, content, review that exists
    tokenizer: str | None = None  # Hub name or folder; default: the model's own
    trust_remote_code: bool = False  # run Python code shipped with the model; only for models whose code you trust


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
        raise UserError("no training data: give --job.train-file (a CSV, JSON, Parquet or text file) or --job.dataset "
                        "(a Hugging Face Hub dataset name or a local dataset folder).")
    if src.train_file:
        train, val = _load_file(src.train_file, src, "train"), None
    else:
        splits = _load_dataset(src)
        if src.train_split not in splits:
            raise UserError(f"the dataset {src.dataset} has no split `{src.train_split}`; it has "
                            f"{', '.join(splits)}. Set --job.train-split.")
        train, val = splits[src.train_split], splits.get(src.validation_split)
        _check_rows(train, f"the {src.train_split} split of {src.dataset}")
    if src.validation_file:
        val = _load_file(src.validation_file, src, "validation")
    if val is None:
        if src.streaming:
            raise UserError("a streamed dataset needs its own validation data: give --job.validation-file, or "
                            "--job.validation-split naming a split of the dataset.")
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
        raise UserError(f"cannot load the dataset {src.dataset}{subset}: {_first_line(error)}. Check --job.dataset and "
                        "--job.subset, and the network (offline, give --job.train-file instead).") from None


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
                        f"--job.{what.replace(' ', '-')}-column to one of them.")
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


# -- the model's side ----------------------------------------------------------------------------------------------

def check_batch_keys(model: Any, keys: Any) -> None:
    """The model's forward must take every key of the batch by name.

    transformers models accept unknown keyword arguments and ignore them, so a tokenizer that makes, say,
    token_type_ids for a model without them would train silently on less than the data holds.
    """
    module = getattr(model, "module", model)  # under DDP, the wrapped model
    forward = original_forward(module)  # before Accelerate's autocast wrapper
    params = inspect.signature(forward).parameters.values()
    named = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = [key for key in keys if key not in named]
    if named and unknown:
        raise UserError(f"the model ({type(module).__name__}) does not take the batch key(s) {', '.join(unknown)}; "
                        f"its forward takes {', '.join(named)}. Use the model's own tokenizer (--job.tokenizer), or a "
                        "model made for these inputs.")


class TextTask(Task):
    """A Task for Hugging Face text models: the batch (less `labels`, when the task computes the loss) is called as
    `model(**batch)`, after a one-time check that the model takes every key of it."""

    def forward(self, model, batch):
        if not self.checked:
            check_batch_keys(model, [key for key in batch if key != "labels" or self.loss_fn is None])
        return super().forward(model, batch)
