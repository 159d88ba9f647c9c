"""Train a fusion model through the tuple batch path: `net(image, input_ids, attention_mask)`.

A small image encoder and a small text encoder, fused by a head, learn image–text matching on the handwritten
digits (is "a handwritten digit seven" true of this image?). The loss per pair is cross-entropy + 0.1 x a
contrastive alignment of the matching pairs: `FusionTask` in accel_train/fusion.py, a `Task` subclass overriding
`losses`.

    python examples/train_fusion.py --epochs 8
    accelerate launch --config_file launch_configs/cpu_ddp.yaml examples/train_fusion.py --output-dir runs/fusion
    python examples/train_fusion.py --tokenizer sentence-transformers/all-MiniLM-L6-v2   # a pretrained tokenizer

Every TrainConfig flag works here, with examples/configs/fusion_script.yaml as the defaults.
"""

from dataclasses import dataclass
from pathlib import Path

import torch

from accel_train import fit, parse_config
from accel_train.fusion import DIGIT_CAPTION, DIGIT_NAMES, FusionNet, FusionTask, matching_splits
from accel_train.jobs.clip import load_tokenizer


@dataclass
class FusionOptions:
    dim: int = 64  # embedding width of both encoders
    alignment_weight: float = 0.1  # weight of the contrastive alignment term
    tokenizer: str | None = None  # Hub id or folder of a tokenizer; default: a vocabulary of the captions' words
    val_fraction: float = 0.2  # stratified hold-out share


def main(argv=None):
    defaults = Path(__file__).parent / "configs" / "fusion_script.yaml"
    cfg, opts = parse_config(argv, defaults=str(defaults), options=FusionOptions)
    tokenizer = load_tokenizer(opts.tokenizer, [DIGIT_CAPTION.format(name) for name in DIGIT_NAMES])
    train_data, eval_data = matching_splits(tokenizer, opts.val_fraction, seed=cfg.seed)  # ((image, ids, mask), label)
    torch.manual_seed(cfg.seed)
    model = FusionNet(len(tokenizer), opts.dim)
    return fit(model, train_data, eval_data, task=FusionTask(opts.alignment_weight), config=cfg, options=opts)


if __name__ == "__main__":
    main()
