"""A fusion model trained through the tuple batch path: `net(image, input_ids, attention_mask)` (`FusionDigits`).

A small CNN encodes the image, a small transformer encodes the text, and a head reads both embeddings (and their
product) to decide whether the text is true of the image: image–text matching on the handwritten digits ("a
handwritten digit seven" next to a 7, or next to another digit). The loss combines two terms, as ALBEF trains its
matching head beside a contrastive objective:

    per-pair loss = cross-entropy(match logits, label) + alignment_weight x contrastive alignment of matching pairs
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from ..errors import UserError
from ..job import Job, Parts
from ..task import Output, Task
from .captions import caption_tokenizer
from .vision import DIGIT_CAPTION, DIGIT_NAMES, digits_splits


class FusionOutput(NamedTuple):
    logits: torch.Tensor  # [n, 2]: no match / match (read by the accuracy metric: the first field)
    image_embeds: torch.Tensor  # [n, dim], L2-normalised
    text_embeds: torch.Tensor  # [n, dim], L2-normalised
    logit_scale: torch.Tensor  # the alignment's learned log temperature


class FusionNet(nn.Module):
    """Image encoder (two conv blocks) + text encoder (token embedding, one transformer layer, masked mean) +
    fusion head over [image, text, image * text]."""

    def __init__(self, vocab_size: int, dim: int = 64, num_classes: int = 2):
        super().__init__()
        self.image_encoder = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(32 * 4 * 4, dim))
        self.token_embedding = nn.Embedding(vocab_size, dim)
        layer = nn.TransformerEncoderLayer(dim, nhead=4, dim_feedforward=2 * dim, dropout=0.0, batch_first=True)
        self.text_encoder = nn.TransformerEncoder(layer, num_layers=1, enable_nested_tensor=False)
        self.head = nn.Sequential(nn.Linear(3 * dim, dim), nn.ReLU(), nn.Linear(dim, num_classes))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def forward(self, image: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> FusionOutput:
        image_embeds = F.normalize(self.image_encoder(image), dim=-1)
        tokens = self.text_encoder(self.token_embedding(input_ids), src_key_padding_mask=attention_mask == 0)
        weights = attention_mask.unsqueeze(-1).to(tokens.dtype)
        text_embeds = F.normalize((tokens * weights).sum(1) / weights.sum(1).clamp(min=1), dim=-1)
        logits = self.head(torch.cat([image_embeds, text_embeds, image_embeds * text_embeds], dim=-1))
        return FusionOutput(logits, image_embeds, text_embeds, self.logit_scale)


def alignment_losses(image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor,
                     match: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric contrastive loss among the batch's matching pairs (each image against the matching texts,
    each text against the matching images); 0 for non-matching pairs. Shape [n]."""
    similarity = logit_scale.float().exp() * image_embeds.float() @ text_embeds.float().T
    others = ~match.unsqueeze(0)  # non-matching pairs are no candidates (a large negative keeps gradients finite)
    targets = torch.arange(len(match), device=match.device)
    image_to_text = F.cross_entropy(similarity.masked_fill(others, -1e4), targets, reduction="none")
    text_to_image = F.cross_entropy(similarity.T.masked_fill(others, -1e4), targets, reduction="none")
    return torch.where(match, (image_to_text + text_to_image) / 2, 0.0)


class FusionTask(Task):
    """Batches `((image, input_ids, attention_mask), label)`; the model is called as `net(*inputs)` by the base
    Task. Each pair's loss: cross-entropy on the match logits + `alignment_weight` x `alignment_losses`."""

    def __init__(self, alignment_weight: float = 0.1):
        super().__init__("cross_entropy", ["accuracy"])
        self.alignment_weight = alignment_weight

    def losses(self, output: FusionOutput, targets: torch.Tensor) -> Output:
        classification = F.cross_entropy(output.logits.float(), targets, reduction="none")
        alignment = alignment_losses(output.image_embeds, output.text_embeds, output.logit_scale, targets == 1)
        return Output(classification + self.alignment_weight * alignment, None, output.logits, targets)


class MatchingPairs(Dataset):
    """Digits images [1, 8, 8] with a caption naming a digit: true for about half the pairs (label 1), naming
    another digit otherwise (label 0). Items: ((image, input_ids, attention_mask), label)."""

    def __init__(self, images: torch.Tensor, digits: torch.Tensor, tokenizer: Any, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        match = torch.rand(len(digits), generator=generator) < 0.5
        other = (digits + torch.randint(1, 10, (len(digits),), generator=generator)) % 10  # never the true digit
        named = torch.where(match, digits, other)
        encoded = tokenizer([DIGIT_CAPTION.format(DIGIT_NAMES[d]) for d in named.tolist()], padding=True,
                            return_tensors="pt")
        self.images, self.input_ids, self.attention_mask = images, encoded["input_ids"], encoded["attention_mask"]
        self.labels = match.long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return (self.images[index], self.input_ids[index], self.attention_mask[index]), self.labels[index]


def matching_splits(tokenizer: Any, val_fraction: float = 0.2, seed: int = 0) -> tuple[MatchingPairs, MatchingPairs]:
    """Image–text matching pairs over the stratified digits split of `tasks.vision`."""
    train, val = digits_splits(val_fraction, seed)
    return (MatchingPairs(*train.tensors, tokenizer, seed=seed), MatchingPairs(*val.tensors, tokenizer, seed=seed + 1))


def fusion_tokenizer(name: str | None, texts: list[str]) -> Any:
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
        tokenizer = fusion_tokenizer(self.tokenizer, [DIGIT_CAPTION.format(name) for name in DIGIT_NAMES])
        train_data, eval_data = matching_splits(tokenizer, self.val_fraction, seed)
        return Parts(FusionNet(len(tokenizer), self.dim), train_data, eval_data, FusionTask(self.alignment_weight))
