"""Offline material for the multimodal tests: digit images written as PNG files with caption files, and a small CLIP
model folder whose tokenizer files the test writes itself (vocab.json, merges.txt, tokenizer_config.json)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import torch

from accel_train.tasks.vision import DIGIT_CAPTION, DIGIT_NAMES
from accel_train.tasks.captions import caption_tokenizer
from accel_train.tasks.vision import load_digits_tensors

CAPTIONS = [DIGIT_CAPTION.format(name) for name in DIGIT_NAMES]


def write_digit_files(folder: Path, rows: range, name: str = "pairs.csv") -> Path:
    """Digits `rows` as PNG files under folder/images/, and a CSV of relative paths, captions and digits."""
    from PIL import Image

    images, digits = load_digits_tensors()
    (folder / "images").mkdir(parents=True, exist_ok=True)
    with open(folder / name, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image_path", "caption", "digit"])
        for i in rows:
            path = f"images/{i:04d}.png"
            if not (folder / path).exists():
                Image.fromarray((images[i, 0] * 255).round().byte().numpy()).save(folder / path)
            writer.writerow([path, CAPTIONS[int(digits[i])], DIGIT_NAMES[int(digits[i])]])
    return folder / name


def write_tokenizer_files(folder: Path) -> None:
    """A CLIP tokenizer folder: BPE vocabulary and merges learned from the digit captions, and its config."""
    learned = json.loads(caption_tokenizer(CAPTIONS).backend_tokenizer.to_str())["model"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(learned["vocab"]))
    merges = [" ".join(pair) if isinstance(pair, list) else pair for pair in learned["merges"]]
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": 32}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "CLIPImageProcessor", "processor_class": "CLIPProcessor",
        "size": {"shortest_edge": 8}, "crop_size": {"height": 8, "width": 8}}))


def clip_config(tokenizer, width: int = 32, layers: int = 1, tokenizer_ids: bool = True):
    """A small CLIPConfig. With `tokenizer_ids` the text config takes the tokenizer's end/start/pad ids; without,
    it keeps CLIP's defaults (end token 49407, outside a small vocabulary: the trap)."""
    from transformers import CLIPConfig

    tower = dict(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=layers, num_attention_heads=2)
    ids = dict(bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id,
               eos_token_id=tokenizer.eos_token_id) if tokenizer_ids else {}
    return CLIPConfig(text_config=dict(vocab_size=len(tokenizer), max_position_embeddings=32, **ids, **tower),
                      vision_config=dict(image_size=8, patch_size=2, **tower), projection_dim=width)


def write_local_clip(folder: Path, width: int = 32, layers: int = 1, seed: int = 0) -> Path:
    """A randomly initialised small CLIP saved as a local model folder that `from_pretrained` loads."""
    from transformers import AutoTokenizer, CLIPModel

    write_tokenizer_files(folder)
    torch.manual_seed(seed)
    CLIPModel(clip_config(AutoTokenizer.from_pretrained(folder), width, layers)).save_pretrained(folder)
    return folder
