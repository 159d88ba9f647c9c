"""Multimodal jobs: finetune a CLIP model on image–caption pairs (`ClipFinetune`), train a small CLIP from scratch
on the handwritten digits (`ClipDigits`, offline), and a fusion classifier on image–text matching (`FusionDigits`).

transformers is imported when a job is built, so `accel_train.jobs` imports without it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..captions import ImageCaptionCollator, ImageCaptions, hub_pairs, read_pairs
from ..errors import UserError
from ..fusion import DIGIT_CAPTION, DIGIT_NAMES, FusionNet, FusionTask, matching_splits
from ..multimodal import ClipTask
from . import Job, Parts


@dataclass
class ClipOptions:
    """Which CLIP model to finetune, on which image–caption pairs (the flags of examples/finetune_clip.py)."""

    model: str = "openai/clip-vit-base-patch32"  # Hub id, or a local folder with the model and its processor
    train_file: str | None = None  # CSV/JSON/JSONL of image paths and captions, or an image folder with metadata.csv
    validation_file: str | None = None  # the same for validation: retrieval recall, zero-shot accuracy
    dataset: str | None = None  # a Hub dataset with image and caption columns, instead of files (needs a network)
    dataset_config: str | None = None  # the Hub dataset's configuration, when it has several
    train_split: str = "train"  # Hub split to train on (slices work: train[:95%])
    validation_split: str = "validation"  # Hub split to validate on (train[95%:] holds out part of train)
    image_column: str = "image"  # image paths (files, relative to the file or absolute) or images (Hub)
    caption_column: str = "caption"  # caption text, or a list of captions per image
    label_column: str | None = None  # each image's class (name or index), for zero-shot accuracy
    class_names: list[str] = field(default_factory=list)  # zero-shot classes; none: no zero-shot accuracy
    prompt: str = "a photo of a {}."  # zero-shot prompt; {} stands for the class name
    gather_negatives: bool | None = None  # contrast with the pairs of all processes; default: with > 1 process
    max_length: int | None = None  # caption tokens; default: the text model's maximum

    def load_data(self) -> tuple[ImageCaptions, ImageCaptions]:
        """(train, validation) pairs from files or a Hub dataset, checked before training."""
        if self.class_names and not self.label_column:
            raise UserError("zero-shot accuracy needs each image's class: set --label-column (or give no class names).")
        columns = dict(image_column=self.image_column, caption_column=self.caption_column,
                       label_column=self.label_column, class_names=self.class_names or None)
        if self.dataset:
            return (hub_pairs(self.dataset, self.train_split, config_name=self.dataset_config, **columns),
                    hub_pairs(self.dataset, self.validation_split, config_name=self.dataset_config, **columns))
        if not (self.train_file and self.validation_file):
            raise UserError("give --train-file and --validation-file (CSV/JSON of image paths and captions, or image "
                            "folders with metadata.csv), or --dataset NAME for a Hub dataset.")
        return read_pairs(self.train_file, **columns), read_pairs(self.validation_file, **columns)


def load_clip(name: str) -> tuple[Any, Any]:
    """A CLIP-style model and its processor (`AutoModel`, `AutoProcessor`) from a Hub id or a local folder."""
    from transformers import AutoModel, AutoProcessor

    try:
        return AutoModel.from_pretrained(name), AutoProcessor.from_pretrained(name)
    except (OSError, ValueError) as error:
        where = "folder" if Path(name).exists() else "model"
        raise UserError(f"cannot load the {where} {name} with its processor: {str(error).splitlines()[0]} (a local "
                        "folder needs config.json, the weights and the processor files save_pretrained writes; a "
                        "Hub id needs a network).") from None


def text_max_length(model: Any) -> int | None:
    """The longest caption the text model takes (CLIP: 77 tokens)."""
    text_config = getattr(getattr(model, "config", None), "text_config", None)
    return getattr(text_config, "max_position_embeddings", None)


def save_processor(processor: Any, run_dir: str) -> None:
    """The processor beside the exported model (`<run>/model/`), on the main process."""
    if os.environ.get("RANK", "0") == "0" and processor is not None:
        processor.save_pretrained(Path(run_dir) / "model")


@dataclass
class ClipFinetune(ClipOptions, Job):
    """Finetune a pretrained CLIP model on image–caption pairs (files or a Hub dataset)."""

    def build(self, seed: int) -> Parts:
        model, self.processor = load_clip(self.model)
        train_data, eval_data = self.load_data()
        task = ClipTask(self.processor, class_names=self.class_names or None, prompt=self.prompt,
                        gather_negatives=self.gather_negatives)
        collate = ImageCaptionCollator(self.processor, self.max_length or text_max_length(model))
        return Parts(model, train_data, eval_data, task, collate)

    def after_fit(self, summary: dict[str, Any], run_dir: str) -> None:
        save_processor(self.processor, run_dir)


def digits_pairs(val_fraction: float = 0.2, seed: int = 0) -> tuple[ImageCaptions, ImageCaptions]:
    """scikit-learn's digits as 8x8 grey images captioned "a handwritten digit seven", labelled with the digit;
    the stratified split of `jobs.digits`."""
    from PIL import Image

    from .digits import digits_splits

    def pairs(split) -> ImageCaptions:
        images, digits = split.tensors
        pictures = [Image.fromarray((image[0] * 255).round().byte().numpy()) for image in images]
        return ImageCaptions(pictures, [DIGIT_CAPTION.format(DIGIT_NAMES[d]) for d in digits.tolist()],
                             digits.tolist(), source="the digits")

    train, val = digits_splits(val_fraction, seed)
    return pairs(train), pairs(val)


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


def small_clip(texts: list[str], image_size: int = 8, patch_size: int = 2, width: int = 64, layers: int = 2):
    """A small randomly initialised CLIPModel and its CLIPProcessor, whose tokenizer holds the words of `texts`.

    CLIP pools each caption at the first `eos_token_id`; the text config takes the tokenizer's end (and start,
    pad) ids, since CLIPConfig's default 49407 lies outside a small vocabulary.
    """
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    tokenizer = caption_tokenizer(texts)
    heads = max(1, width // 32)
    tower = dict(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=layers, num_attention_heads=heads)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), max_position_embeddings=32, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **tower),
        vision_config=dict(image_size=image_size, patch_size=patch_size, **tower), projection_dim=width)
    side = {"height": image_size, "width": image_size}
    images = CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size=side)
    return CLIPModel(config), CLIPProcessor(image_processor=images, tokenizer=tokenizer)


@dataclass
class ClipDigits(Job):
    """A small CLIP trained from scratch on the handwritten digits and their captions; reports retrieval recall and
    zero-shot digit accuracy. Runs offline."""

    val_fraction: float = 0.2  # stratified hold-out share
    image_size: int = 8  # the processor resizes the digits (8x8) to this
    patch_size: int = 2  # vision transformer patch side: (image_size / patch_size)^2 patches
    width: int = 64  # hidden size of both towers and of the shared embedding
    layers: int = 2  # transformer layers per tower
    gather_negatives: bool | None = None  # contrast with all processes' pairs; default: with > 1 process

    def build(self, seed: int) -> Parts:
        train_data, eval_data = digits_pairs(self.val_fraction, seed)
        prompts = [DIGIT_CAPTION.format(name) for name in DIGIT_NAMES]
        model, self.processor = small_clip(prompts, self.image_size, self.patch_size, self.width, self.layers)
        task = ClipTask(self.processor, class_names=DIGIT_NAMES, prompt=DIGIT_CAPTION,
                        gather_negatives=self.gather_negatives)
        return Parts(model, train_data, eval_data, task, ImageCaptionCollator(self.processor))

    def after_fit(self, summary: dict[str, Any], run_dir: str) -> None:
        save_processor(self.processor, run_dir)


def load_tokenizer(name: str | None, texts: list[str]) -> Any:
    """`AutoTokenizer` from a Hub id or folder, or (None) `caption_tokenizer` over the words of `texts`."""
    if name is None:
        return caption_tokenizer(texts)
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as error:
        raise UserError(f"cannot load the tokenizer {name}: {str(error).splitlines()[0]}") from None


@dataclass
class FusionDigits(Job):
    """Image–text matching on the digits with `FusionNet` (image encoder + text encoder + fusion head), trained on
    cross-entropy + alignment_weight x contrastive alignment."""

    val_fraction: float = 0.2  # stratified hold-out share
    dim: int = 64  # embedding width of both encoders
    alignment_weight: float = 0.1  # weight of the contrastive alignment term
    tokenizer: str | None = None  # Hub id or folder of a tokenizer; default: a vocabulary of the captions' words

    def build(self, seed: int) -> Parts:
        tokenizer = load_tokenizer(self.tokenizer, [DIGIT_CAPTION.format(name) for name in DIGIT_NAMES])
        train_data, eval_data = matching_splits(tokenizer, self.val_fraction, seed)
        return Parts(FusionNet(len(tokenizer), self.dim), train_data, eval_data, FusionTask(self.alignment_weight))
