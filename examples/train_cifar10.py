"""ResNet-18 on CIFAR-10 with random crop + flip augmentation (torchvision).

    python examples/train_cifar10.py --job.download true                  # fetches CIFAR-10 into ./data once
    accelerate launch --config_file launch_configs/multi_gpu.yaml examples/train_cifar10.py --job.root data
    accelerate launch --config_file launch_configs/bf16.yaml examples/train_cifar10.py --job.root data

The job file examples/configs/cifar10.yaml gives the defaults; the script takes the same flags as
`accel-train train --config examples/configs/cifar10.yaml`.
"""

from pathlib import Path

import torch

from accel_train import exit_on_user_error, fit, parse_config
from accel_train.launch import leave
from accel_train.tasks.vision import Cifar10, cifar10_splits, resnet18_cifar

JOB_FILE = Path(__file__).parent / "configs" / "cifar10.yaml"


def main(argv=None):
    cfg, job = parse_config(argv, defaults=str(JOB_FILE), options=Cifar10)
    torch.manual_seed(cfg.seed)
    model = resnet18_cifar(num_classes=10)
    train_data, eval_data = cifar10_splits(job.root, download=job.download, augment=job.augment)
    return fit(model, train_data, eval_data, loss="cross_entropy", metrics=["accuracy"], config=cfg, options=job)


if __name__ == "__main__":
    with exit_on_user_error():
        main()
    leave(0)  # end without Python's teardown, 1-2 s after a run (see accel_train.launch.leave)
