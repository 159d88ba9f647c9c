"""Image–caption pairs for CLIP-style training: read, checked before training starts, and collated.

Sources:

    read_pairs("pairs.csv", "image_path", "caption")   a CSV, JSON (records or columns) or JSON Lines file of image
                                                       paths (relative to the file, or absolute) and captions
    read_pairs("photos/", "file_name", "caption")      an image folder holding metadata.csv/.jsonl or captions.csv/.json
    hub_pairs("user/dataset", "train", "image", "caption")   a Hugging Face Hub dataset (needs a network)
    ImageCaptions(images, captions)                    lists of paths or PIL images, and captions

A caption cell may also hold a list of captions of that image (as in COCO or Flickr30k): each becomes one pair.
Distinct images and distinct caption texts are numbered (`image_id`, `caption_id`), so retrieval can count a hit when
the retrieved caption's text is the true one, even when captions repeat across images. Missing or unreadable
images, captions that are not text and mismatched counts are refused before any output is written.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from ..errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
CAPTION_FILES = ("metadata.csv", "metadata.jsonl", "metadata.json", "captions.csv", "captions.jsonl", "captions.json")


def _listing(items: Sequence[Any], shown: int = 5) -> str:
    names = ", ".join(str(item) for item in items[:shown])
    return names + (f" and {len(items) - shown} more" if len(items) > shown else "")


def _number_distinct(keys: Sequence[Any]) -> list[int]:
    """0, 1, 2, ... in order of first appearance; equal keys get equal numbers."""
    ids: dict[Any, int] = {}
    return [ids.setdefault(key, len(ids)) for key in keys]


class ImageCaptions(Dataset):
    """Image–caption pairs. Item i: {"image": RGB PIL image, "caption", "image_id", "caption_id"[, "label"]}.

    Args:
        images: image file paths, PIL images, or any sequence of them (a Hub dataset column).
        captions: one caption per image, or a list of captions per image (each becomes a pair).
        labels: class index per image, for zero-shot accuracy (optional).
        source: names the data in messages ("pairs.csv").
        check_files: open every image file once now, so that a missing or unreadable one stops the run before it
            starts (images given as PIL objects or by a Hub dataset are decoded when a batch needs them).
    """

    def __init__(self, images: Sequence[Any], captions: Sequence[Any], labels: Sequence[int] | None = None, *,
                 source: str = "the data", check_files: bool = True):
        if len(images) != len(captions):
            raise UserError(f"{source} has {len(images)} images but {len(captions)} captions: give exactly one "
                            "caption (or one list of captions) per image.")
        if labels is not None and len(labels) != len(images):
            raise UserError(f"{source} has {len(images)} images but {len(labels)} labels.")
        if len(images) == 0:
            raise UserError(f"{source} holds no image–caption pairs.")
        rows, texts = [], []
        for row, caption in enumerate(captions):
            for text in check_caption(caption, row, source):
                rows.append(row)
                texts.append(text)
        paths = [str(image) for image in images] if isinstance(images[0], (str, Path)) else None
        if paths is not None and check_files:
            check_images(paths, source)
        self.images, self.labels, self.source = images, labels, source
        self.rows, self.captions = rows, texts
        image_of_row = _number_distinct(paths if paths is not None else range(len(images)))
        self.image_ids = [image_of_row[row] for row in rows]
        self.caption_ids = _number_distinct(texts)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.rows[index]
        item = {"image": load_image(self.images[row], self.source), "caption": self.captions[index],
                "image_id": self.image_ids[index], "caption_id": self.caption_ids[index]}
        if self.labels is not None:
            item["label"] = int(self.labels[row])
        return item


def check_caption(caption: Any, row: int, source: str) -> list[str]:
    """The caption text(s) of one row; anything but non-empty text is a UserError naming the row."""
    texts = caption if isinstance(caption, (list, tuple)) else [caption]
    for text in texts:
        if text is None:
            raise UserError(f"row {row + 1} of {source} has no caption.")
        if not isinstance(text, str):
            raise UserError(f"the captions of {source} must be text, but row {row + 1} holds "
                            f"{type(text).__name__} ({text!r}). Point the caption column at the column of captions.")
        if not text.strip():
            raise UserError(f"row {row + 1} of {source} has an empty caption.")
    if not texts:
        raise UserError(f"row {row + 1} of {source} has no caption.")
    return list(texts)


def check_images(paths: Sequence[str | Path], source: str) -> None:
    """Every file must exist and open as an image (PIL reads the header and verifies the file)."""
    from PIL import Image

    missing = [str(p) for p in paths if not Path(p).is_file()]
    if missing:
        raise UserError(f"{len(missing)} of {len(paths)} image files named in {source} are missing: "
                        f"{_listing(missing)}. Paths are read relative to the folder of the captions file, or "
                        "absolute.")
    for path in paths:
        try:
            with Image.open(path) as image:
                image.verify()
        except Exception as error:  # PIL raises many types for damaged files
            raise UserError(f"cannot read image {path} (named in {source}): {type(error).__name__}: {error}. "
                            "Replace or remove it.") from None


def load_image(image: Any, source: str):
    """An RGB PIL image from a path or a PIL image."""
    from PIL import Image

    if not isinstance(image, (str, Path)):
        return image.convert("RGB")
    try:
        with Image.open(image) as opened:
            return opened.convert("RGB")
    except Exception as error:  # damaged after the check, or image data PIL cannot decode
        raise UserError(f"cannot read image {image} (named in {source}): {type(error).__name__}: {error}.") from None


def read_table(path: Path) -> tuple[list[str], list[dict[str, Any]]]:
    """(column names, rows) of a CSV, JSON Lines, or JSON file (a list of records, or a dict of equal columns)."""
    if path.suffix not in (".csv", ".json", ".jsonl"):
        raise UserError(f"{path}: captions files are .csv, .json or .jsonl.")
    try:
        if path.suffix == ".csv":
            with open(path, newline="", encoding="utf-8-sig") as handle:  # -sig: spreadsheets start with a BOM
                reader = csv.DictReader(handle)
                return list(reader.fieldnames or []), list(reader)
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".jsonl":
            data = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            data = json.loads(text)
    except json.JSONDecodeError as error:
        raise UserError(f"{path} is not valid JSON: {error}.") from None
    except UnicodeDecodeError as error:
        raise UserError(f"{path} is not UTF-8 text (byte 0x{error.object[error.start]:02x} at position "
                        f"{error.start}): save it as UTF-8 (a spreadsheet's \"CSV UTF-8\"), or convert it, for "
                        f"example `iconv -f latin1 -t utf-8`.") from None
    if isinstance(data, dict):  # columns: {"image": [...], "caption": [...]}
        lengths = {key: len(value) for key, value in data.items() if isinstance(value, list)}
        if len(set(lengths.values())) > 1:
            raise UserError(f"the columns of {path} have different lengths ({lengths}): every image needs "
                            "exactly one caption entry.")
        data = [dict(zip(lengths, values)) for values in zip(*(data[key] for key in lengths))]
    if not isinstance(data, list) or not all(isinstance(row, dict) for row in data):
        raise UserError(f"{path} must hold a list of records or a dict of columns.")
    return list(dict.fromkeys(key for row in data for key in row)), data


def _column(columns: list[str], name: str, source: str, what: str) -> str:
    from ..errors import closest

    if name not in columns:
        raise UserError(f"{source} has no {what} column `{name}`.{closest(name, columns)} Its columns: "
                        f"{', '.join(columns) or 'none'}.")
    return name


def _labels(values: list[Any], class_names: Sequence[str], source: str) -> list[int]:
    """Class indices from indices or class names."""
    index = {name: i for i, name in enumerate(class_names)}
    labels = []
    for row, value in enumerate(values):
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            value = int(value)
        label = index.get(value) if isinstance(value, str) else value
        if not isinstance(label, int) or not 0 <= label < len(class_names):
            raise UserError(f"row {row + 1} of {source} has label {value!r}, which is neither one of the "
                            f"{len(class_names)} class names nor an index 0..{len(class_names) - 1}.")
        labels.append(label)
    return labels


def read_pairs(path: str | Path, image_column: str = "image", caption_column: str = "caption",
               label_column: str | None = None, class_names: Sequence[str] | None = None) -> ImageCaptions:
    """Pairs from a CSV/JSON/JSON Lines file, or from an image folder holding one of `CAPTION_FILES`.

    Image paths are relative to the file's folder, or absolute. Labels (class names or indices) are read when
    `label_column` and `class_names` are given.
    """
    path = Path(path)
    folder = path.is_dir()
    if folder:
        found = [path / name for name in CAPTION_FILES if (path / name).is_file()]
        if not found:
            raise UserError(f"the image folder {path} has no captions file: add one of {', '.join(CAPTION_FILES)}.")
        path = found[0]
    elif not path.is_file():
        raise UserError(f"no such captions file: {path}.")
    source = str(path)
    columns, rows = read_table(path)
    _column(columns, image_column, source, "image")
    _column(columns, caption_column, source, "caption")
    captions = [row.get(caption_column) for row in rows]
    if path.suffix == ".csv" and captions and all(_is_number(c) for c in captions):
        raise UserError(f"the caption column `{caption_column}` of {source} holds numbers, not caption text. "
                        "Point the caption column at the column of captions.")
    empty = [i + 1 for i, row in enumerate(rows) if not str(row.get(image_column) or "").strip()]
    if empty:
        raise UserError(f"{len(empty)} row(s) of {source} have no image path (rows {_listing(empty)}).")
    images = [str((path.parent / str(row[image_column])).resolve()) for row in rows]
    if folder:
        _check_all_captioned(path.parent, images, source)
    labels = None
    if label_column and class_names:
        _column(columns, label_column, source, "label")
        labels = _labels([row.get(label_column) for row in rows], class_names, source)
    return ImageCaptions(images, captions, labels, source=source)


def _is_number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def _check_all_captioned(folder: Path, captioned: list[str], source: str) -> None:
    """An image folder: every image in it needs a caption (an uncaptioned one is usually a missing row)."""
    named = set(captioned)
    images = [p for p in sorted(folder.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES]
    uncaptioned = [str(p.relative_to(folder)) for p in images if str(p.resolve()) not in named]
    if uncaptioned:
        raise UserError(f"{folder} holds {len(images)} images but {source} has {len(captioned)} captions: "
                        f"{len(uncaptioned)} image(s) have none ({_listing(uncaptioned)}). Add their captions or "
                        "move them out of the folder.")


def hub_pairs(name: str, split: str, image_column: str = "image", caption_column: str = "caption",
              label_column: str | None = None, class_names: Sequence[str] | None = None,
              config_name: str | None = None) -> ImageCaptions:
    """Pairs from a Hugging Face Hub dataset split (`train`, `validation`, or a slice such as `train[:5%]`)."""
    import datasets

    try:
        data = datasets.load_dataset(name, config_name, split=split)
    except ValueError as error:  # an unknown split names the ones that exist
        raise UserError(f"cannot load split `{split}` of {name}: {error}") from None
    return from_hf_dataset(data, image_column, caption_column, label_column, class_names, source=f"{name} ({split})")


def from_hf_dataset(data: Any, image_column: str = "image", caption_column: str = "caption",
                    label_column: str | None = None, class_names: Sequence[str] | None = None,
                    source: str = "the dataset") -> ImageCaptions:
    """Pairs from a `datasets.Dataset` with an image column (images or paths) and a caption column (text, or
    lists of text). Images are decoded when a batch needs them."""
    columns = list(data.column_names)
    _column(columns, image_column, source, "image")
    _column(columns, caption_column, source, "caption")
    feature = data.features[caption_column]
    dtype = getattr(feature, "dtype", None) or getattr(getattr(feature, "feature", None), "dtype", None)
    if dtype not in ("string", "large_string"):
        raise UserError(f"the caption column `{caption_column}` of {source} holds {feature}, not text. Point the "
                        "caption column at the column of captions.")
    labels = None
    if label_column and class_names:
        _column(columns, label_column, source, "label")
        labels = _labels(list(data[label_column]), class_names, source)
    images = data[image_column]  # a lazy column: each image is decoded when indexed
    return ImageCaptions(images, list(data[caption_column]), labels, source=source)


class ImageCaptionCollator:
    """Merges samples into a batch through the model's processor: pixel values and tokenized captions (padded to
    the batch's longest, truncated to `max_length`), plus the ids retrieval needs and the labels, when present."""

    def __init__(self, processor: Any, max_length: int | None = None):
        self.processor, self.max_length = processor, max_length

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = dict(self.processor(images=[s["image"] for s in samples], text=[s["caption"] for s in samples],
                                    padding=True, truncation=self.max_length is not None,
                                    max_length=self.max_length, return_tensors="pt"))
        for key in ("image_id", "caption_id", "label"):
            if key in samples[0]:
                batch[key] = torch.tensor([s[key] for s in samples])
        return batch


def caption_tokenizer(texts: Sequence[str]):
    """A CLIP tokenizer for a model trained from scratch on a small caption set (a pretrained model brings its own).

    Its vocabulary holds the 256 byte symbols (alone and word-final, as CLIP's does, so any text tokenizes) and each
    word of `texts`, built up by BPE merges; the start and end tokens come last. The same texts give the same ids
    (the tokenizers library's BPE trainer numbers tied merges differently from run to run).
    """
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    alphabet = sorted(ByteLevel.alphabet())
    vocab = {symbol: i for i, symbol in enumerate(alphabet + [symbol + "</w>" for symbol in alphabet])}
    backend = CLIPTokenizer().backend_tokenizer  # CLIP's own normalizer and word splitting
    words = sorted({word for text in texts
                    for word, _ in backend.pre_tokenizer.pre_tokenize_str(backend.normalizer.normalize_str(text))})
    merges = []
    for word in words:
        merged = word[0] if len(word) > 1 else word + "</w>"
        for symbol in list(word[1:-1]) + ([word[-1] + "</w>"] if len(word) > 1 else []):
            merges.append((merged, symbol))
            merged += symbol
            vocab.setdefault(merged, len(vocab))
    merges = list(dict.fromkeys(merges))  # words sharing a beginning share its merges
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges)
