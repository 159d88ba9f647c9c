"""Train a fusion model through the tuple batch path: `net(image, input_ids, attention_mask)`.

A small image encoder and a small text encoder, fused by a head, learn image–text matching on the handwritten
digits (is "a handwritten digit seven" true of this image?). The loss per pair is cross-entropy + 0.1 x a
contrastive alignment of the matching pairs: `FusionTask` in accel_train/tasks/fusion.py, a `Task` subclass
overriding `losses`.

    python examples/train_fusion.py --epochs 8
    accelerate launch --config_file launch_configs/cpu_ddp.yaml examples/train_fusion.py --output-dir runs/fusion
    python examples/train_fusion.py --job.tokenizer sentence-transformers/all-MiniLM-L6-v2   # needs the network

The job file examples/configs/fusion_digits.yaml gives the defaults; the script takes the same flags as
`accel-train train`.
"""

from pathlib import Path

import torch

from accel_train import exit_on_user_error, fit, parse_config
from accel_train.launch import leave
from accel_train.tasks.fusion import FusionDigits, FusionNet, FusionTask, fusion_tokenizer, matching_splits
from accel_train.tasks.vision import DIGIT_CAPTION, DIGIT_NAMES

JOB_FILE = Path(__file__).parent / "configs" / "fusion_digits.yaml"


def main(argv=None):
    cfg, job = parse_config(argv, defaults=str(JOB_FILE), options=FusionDigits)
    tokenizer = fusion_tokenizer(job.tokenizer, [DIGIT_CAPTION.format(name) for name in DIGIT_NAMES])
    train_data, eval_data = matching_splits(tokenizer, job.val_fraction, seed=cfg.seed)  # ((image, ids, mask), label)
    torch.manual_seed(cfg.seed)
    model = FusionNet(len(tokenizer), job.dim)
    return fit(model, train_data, eval_data, task=FusionTask(job.alignment_weight), config=cfg, options=job)


if __name__ == "__main__":
    with exit_on_user_error():
        main()
    leave(0)  # end without Python's teardown, 1-2 s after a run (see accel_train.launch.leave)
