"""ResNet-18 on CIFAR-10 with random crop + flip augmentation (torchvision).

    python examples/train_cifar10.py --download true                       # fetches CIFAR-10 into ./data once
    accelerate launch --config_file launch_configs/multi_gpu.yaml examples/train_cifar10.py --root data
    accelerate launch --config_file launch_configs/bf16.yaml examples/train_cifar10.py --root data

Every TrainConfig flag works here, with examples/configs/cifar10_script.yaml as the defaults.
"""

from dataclasses import dataclass
from pathlib import Path

import torch

from accel_train import fit, parse_config
from accel_train.jobs.cifar10 import cifar10_splits, resnet18_cifar


@dataclass
class CifarOptions:
    root: str = "data"  # folder holding (or to hold) cifar-10-batches-py/
    download: bool = False  # fetch CIFAR-10 into root first (needs a network)
    augment: bool = True  # random crop (padding 4) + horizontal flip for training images


def main(argv=None):
    defaults = Path(__file__).parent / "configs" / "cifar10_script.yaml"
    cfg, opts = parse_config(argv, defaults=str(defaults), options=CifarOptions)
    torch.manual_seed(cfg.seed)
    model = resnet18_cifar(num_classes=10)
    train_data, eval_data = cifar10_splits(opts.root, download=opts.download, augment=opts.augment)
    return fit(model, train_data, eval_data, loss="cross_entropy", metrics=["accuracy"], config=cfg, options=opts)


if __name__ == "__main__":
    main()
