"""Contrastive image–text training (CLIP): the task, its loss, its retrieval and zero-shot metrics, and the job
that finetunes a pretrained CLIP on image–caption pairs (`ClipFinetune`).

    task = ClipTask(processor, class_names=["cat", "dog"], prompt="a photo of a {}.")
    fit(model, train_pairs, val_pairs, task=task, collate_fn=ImageCaptionCollator(processor), processor=processor)

The loss is CLIP's symmetric cross-entropy over the batch's image–caption similarities, scaled by a learned
temperature clamped as CLIP does (a scale of at most 100). Under DDP each process can score its images and captions
against those of all processes (`gather_negatives`, on by default with more than one process): the loss is then the
single-process loss of the whole global batch, with gradients flowing back to the process that made each embedding.

Validation reports image->text and text->image recall@k over the whole validation set (embeddings gathered across
processes, each pair once) and, given class names, zero-shot classification accuracy.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..errors import UserError
from ..job import Job, Parts
from ..metrics import Accuracy, Metric
from ..task import Output, Task
from .captions import ImageCaptionCollator, ImageCaptions, hub_pairs, read_pairs

MAX_LOGIT_SCALE = math.log(100.0)  # CLIP: "clipped to prevent scaling the logits by more than 100"
MODEL_INPUTS = ("pixel_values", "input_ids", "attention_mask")


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward hands each process the gradient of its own rows, summed over all processes' losses.

    (torch.distributed.nn.functional.all_gather does the same but is deprecated; this needs only all_reduce, which
    every backend has.)"""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        ctx.rows = (dist.get_rank() * len(tensor), len(tensor))
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        start, n = ctx.rows
        return grad[start:start + n]


def gathering(gather_negatives: bool | None) -> bool:
    """Whether negatives come from all processes: the option, or (None) whenever there is more than one process."""
    distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    return distributed and gather_negatives is not False


def contrastive_losses(image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor,
                       gather: bool = False) -> torch.Tensor:
    """Per-pair symmetric InfoNCE: (CE(image -> all captions) + CE(caption -> all images)) / 2, shape [n].

    Their mean is CLIP's loss. With `gather`, the candidates are the embeddings of all processes (every process's
    batch must have the same size, as Accelerate's prepared loaders give).
    """
    image_embeds, text_embeds = image_embeds.float(), text_embeds.float()  # exact softmax under autocast too
    all_images, all_texts, offset = image_embeds, text_embeds, 0
    if gather:
        all_images, all_texts = _GatherWithGrad.apply(image_embeds), _GatherWithGrad.apply(text_embeds)
        offset = dist.get_rank() * len(image_embeds)
    scale = logit_scale.float().exp()
    targets = torch.arange(len(image_embeds), device=image_embeds.device) + offset
    image_to_text = F.cross_entropy(scale * image_embeds @ all_texts.T, targets, reduction="none")
    text_to_image = F.cross_entropy(scale * text_embeds @ all_images.T, targets, reduction="none")
    return (image_to_text + text_to_image) / 2


def features(output: Any) -> torch.Tensor:
    """A tensor from `get_text_features` (transformers 5 returns an output object with `pooler_output`)."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class ClipTask(Task):
    """Batches of {"pixel_values", "input_ids", "attention_mask", "image_id", "caption_id"[, "label"]} (as
    `ImageCaptionCollator` makes them) -> the contrastive loss, embeddings for retrieval, zero-shot logits.

    The model is called as `model(pixel_values=..., input_ids=..., attention_mask=...)` and returns L2-normalised
    `image_embeds` and `text_embeds` (as transformers' CLIPModel does); it holds the log temperature as a
    `logit_scale` parameter. Zero-shot accuracy also calls `model.get_text_features(input_ids, attention_mask)`.
    A CLIPModel in one process computes its own loss (`return_loss=True`); otherwise `contrastive_losses` does.

    Args:
        processor: the model's processor or tokenizer (tokenizes the class prompts, names the end token).
        class_names: classes for zero-shot accuracy (batches then need "label").
        prompt: the class prompt, `{}` standing for the class name.
        gather_negatives: score against the embeddings of all processes; None: when there is more than one.
        recall_at: the k of recall@k.
    """

    def __init__(self, processor: Any = None, class_names: Sequence[str] | None = None,
                 prompt: str = "a photo of a {}.", gather_negatives: bool | None = None,
                 recall_at: Sequence[int] = (1, 5, 10)):
        metrics: list[Metric] = [Retrieval(recall_at)]
        if class_names:
            metrics.append(ZeroShotAccuracy())
        super().__init__(loss=None, metrics=metrics, class_names=class_names)
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.gather_negatives = gather_negatives
        self.prompts = None
        if class_names:
            if self.tokenizer is None:
                raise UserError("zero-shot accuracy needs the processor (or tokenizer) to tokenize the class prompts.")
            self.prompts = dict(self.tokenizer([prompt.format(name) for name in class_names], padding=True,
                                               return_tensors="pt"))
        self.class_embeds: torch.Tensor | None = None  # zero-shot classifier, made once per validation pass
        self.logit_scale: torch.Tensor | None = None
        self._wrapped = self._inner = None  # the model as called, and inside its DDP wrapper (looked up once)

    def forward(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[Any, dict[str, Any]]:
        inner = self._unwrap(model)
        if not hasattr(inner, "logit_scale"):
            raise UserError("a CLIP-style model needs a learned temperature: add `self.logit_scale = "
                            "nn.Parameter(torch.tensor(math.log(1 / 0.07)))`, used as logits * logit_scale.exp().")
        with torch.no_grad():  # CLIP keeps the learned temperature in [0, ln 100]
            inner.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
        if not self.checked:
            check_end_token(inner, batch["input_ids"], self.tokenizer)
        own_loss = not gathering(self.gather_negatives) and _takes_return_loss(type(inner))
        inputs = {key: batch[key] for key in MODEL_INPUTS if key in batch}
        output = model(**inputs, return_loss=True) if own_loss else model(**inputs)
        if model.training:
            self.class_embeds = None  # the weights change: the next validation encodes the class prompts again
        elif self.prompts is not None and self.class_embeds is None:
            self.class_embeds = self._encode_prompts(inner, output.text_embeds.device)
        self.logit_scale = inner.logit_scale  # read by `losses`
        return output, {key: batch[key] for key in ("image_id", "caption_id", "label") if key in batch}

    def _unwrap(self, model: torch.nn.Module) -> torch.nn.Module:
        if model is not self._wrapped:
            from accelerate.utils import extract_model_from_parallel

            self._wrapped, self._inner = model, extract_model_from_parallel(model)
        return self._inner

    def losses(self, output: Any, targets: dict[str, torch.Tensor]) -> Output:
        image, text = output.image_embeds, output.text_embeds
        if getattr(output, "loss", None) is not None:
            losses = output.loss.float().expand(len(image))  # CLIP's batch mean counts for every pair
        else:
            losses = contrastive_losses(image, text, self.logit_scale, gather=gathering(self.gather_negatives))
        predictions = {"image": image.detach().float(), "text": text.detach().float()}
        if self.class_embeds is not None:
            predictions["zero_shot"] = predictions["image"] @ self.class_embeds.T
        return Output(losses, None, predictions, targets)

    def _encode_prompts(self, model: torch.nn.Module, device: torch.device) -> torch.Tensor:
        if not hasattr(model, "get_text_features"):
            raise UserError("zero-shot accuracy encodes the class prompts with `model.get_text_features(input_ids, "
                            "attention_mask)`: add that method to the model, or give no class names.")
        prompts = {key: value.to(device) for key, value in self.prompts.items()}
        return F.normalize(features(model.get_text_features(**prompts)).float(), dim=-1)


@functools.cache
def _takes_return_loss(model_type: type) -> bool:
    """Whether the model computes CLIP's loss itself (transformers' CLIPModel: `return_loss=True`)."""
    return "return_loss" in inspect.signature(model_type.forward).parameters


def check_end_token(model: torch.nn.Module, input_ids: torch.Tensor, tokenizer: Any) -> None:
    """CLIP pools each caption at the first `text_config.eos_token_id`: captions without that token are pooled at
    the wrong place with no error. Checked once, on the first batch."""
    text_config = getattr(getattr(model, "config", None), "text_config", None)
    eos = getattr(text_config, "eos_token_id", None)
    if eos is None or eos == 2:  # older CLIP configs pool at the highest token id instead
        return
    without = int(((input_ids == eos).sum(dim=1) == 0).sum())
    if without:
        ends = getattr(tokenizer, "eos_token_id", None)
        raise UserError(
            f"{without} of {len(input_ids)} captions in the first batch contain no end token {eos} (the model's "
            f"text_config.eos_token_id), where CLIP reads each caption's embedding"
            f"{f'; the tokenizer ends captions with {ends}' if ends is not None else ''}. Make the model's "
            "text_config eos_token_id (and bos/pad ids) match the tokenizer.")


class Retrieval(Metric):
    """Image->text and text->image recall@k over all validation pairs (validation only).

    Each distinct image queries the distinct caption texts: a hit when one of its own captions is among the k
    most similar. Each distinct caption text queries the distinct images: a hit when one of the images it
    describes is among the k most similar. A k above the number of candidates counts as all of them.
    """

    train = False

    def __init__(self, recall_at: Sequence[int] = (1, 5, 10)):
        self.recall_at = tuple(recall_at)
        self.reset()

    def reset(self) -> None:
        self.parts: list[tuple[torch.Tensor, ...]] = []

    def update(self, predictions: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> None:
        self.parts.append((predictions["image"], predictions["text"], targets["image_id"], targets["caption_id"]))

    def compute(self) -> dict[str, float]:
        if not self.parts:
            return {}
        images, texts, image_ids, caption_ids = (torch.cat(column) for column in zip(*self.parts))
        image_rows, image_index = _distinct(image_ids)
        text_rows, text_index = _distinct(caption_ids)
        relevant = torch.zeros(len(image_rows), len(text_rows), dtype=torch.bool, device=images.device)
        relevant[image_index, text_index] = True
        images, texts = images[image_rows], texts[text_rows]
        return {**self._recall("i2t", images, texts, relevant), **self._recall("t2i", texts, images, relevant.T)}

    def _recall(self, name: str, queries: torch.Tensor, candidates: torch.Tensor, relevant: torch.Tensor,
                chunk: int = 1024) -> dict[str, float]:
        depth = min(max(self.recall_at), len(candidates))
        hits = []
        for start in range(0, len(queries), chunk):  # a chunk of queries at a time: no full similarity matrix
            ranked = (queries[start:start + chunk] @ candidates.T).topk(depth, dim=1).indices
            hits.append(relevant[start:start + chunk].gather(1, ranked).cumsum(dim=1) > 0)  # hit within top j+1
        found = torch.cat(hits)
        return {f"{name}_recall@{k}": float(found[:, min(k, depth) - 1].double().mean()) for k in self.recall_at}


def _distinct(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the first row holding each distinct id, each row's position among the distinct ids)."""
    values, index = torch.unique(ids, return_inverse=True)
    first = torch.full((len(values),), len(ids), dtype=torch.long, device=ids.device)
    first.scatter_reduce_(0, index, torch.arange(len(ids), device=ids.device), reduce="amin")
    return first, index


class ZeroShotAccuracy(Accuracy):
    """Accuracy of the nearest class prompt (`ClipTask` with class names), on validation."""

    train = False

    def __init__(self):
        super().__init__("zero_shot_accuracy")

    def update(self, predictions: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> None:
        if "zero_shot" not in predictions or "label" not in targets:
            raise UserError("zero-shot accuracy needs a label for every image: set the label column of the data.")
        super().update(predictions["zero_shot"], targets["label"])


# -- the finetuning job ------------------------------------------------------------------------------------------------

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
            raise UserError("zero-shot accuracy needs each image's class: set --job.label-column (or give no class "
                            "names).")
        columns = dict(image_column=self.image_column, caption_column=self.caption_column,
                       label_column=self.label_column, class_names=self.class_names or None)
        if self.dataset:
            return (hub_pairs(self.dataset, self.train_split, config_name=self.dataset_config, **columns),
                    hub_pairs(self.dataset, self.validation_split, config_name=self.dataset_config, **columns))
        if not (self.train_file and self.validation_file):
            raise UserError("give --job.train-file and --job.validation-file (CSV/JSON of image paths and captions, or "
                            "image folders with metadata.csv), or --job.dataset NAME for a Hub dataset.")
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


@dataclass
class ClipFinetune(ClipOptions, Job):
    """Finetune a pretrained CLIP model on image–caption pairs (files or a Hub dataset); the processor is saved
    beside the model in `<run>/model/`."""

    def build(self, seed: int) -> Parts:
        train_data, eval_data = self.load_data()  # every image is checked before the run folder is written
        model, processor = load_clip(self.model)
        task = ClipTask(processor, class_names=self.class_names or None, prompt=self.prompt,
                        gather_negatives=self.gather_negatives)
        collate = ImageCaptionCollator(processor, self.max_length or text_max_length(model))
        return Parts(model, train_data, eval_data, task, collate, processor=processor)
