"""A small CLIP trained from scratch on scikit-learn's handwritten digits and their captions (`ClipDigits`): the
digits as captioned images, a tokenizer over the captions' words, and a small randomly initialised CLIPModel.
Runs offline; reports retrieval recall and zero-shot digit accuracy.

transformers is imported when a job is built, so this module imports without it.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..job import Job, Parts
from .captions import ImageCaptionCollator, ImageCaptions, caption_tokenizer
from .clip import ClipTask
from .vision import DIGIT_CAPTION, DIGIT_NAMES, digits_splits


def digits_pairs(val_fraction: float = 0.2, seed: int = 0) -> tuple[ImageCaptions, ImageCaptions]:
    """scikit-learn's digits as 8x8 grey images captioned "a handwritten digit seven", labelled with the digit;
    the stratified split of `tasks.vision`."""
    from PIL import Image

    def pairs(split) -> ImageCaptions:
        images, digits = split.tensors
        pictures = [Image.fromarray((image[0] * 255).round().byte().numpy()) for image in images]
        return ImageCaptions(pictures, [DIGIT_CAPTION.format(DIGIT_NAMES[d]) for d in digits.tolist()],
                             digits.tolist(), source="the digits")

    train, val = digits_splits(val_fraction, seed)
    return pairs(train), pairs(val)


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
        model, processor = small_clip(prompts, self.image_size, self.patch_size, self.width, self.layers)
        task = ClipTask(processor, class_names=DIGIT_NAMES, prompt=DIGIT_CAPTION,
                        gather_negatives=self.gather_negatives)
        return Parts(model, train_data, eval_data, task, ImageCaptionCollator(processor), processor=processor)
