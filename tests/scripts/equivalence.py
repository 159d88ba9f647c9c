"""Train a deterministic model (no dropout, no batch norm) on the first N digits; tests compare the run folders.

    accelerate launch --config_file launch_configs/cpu_ddp.yaml tests/scripts/equivalence.py --batch-size 8 ...
    python tests/scripts/equivalence.py --batch-size 32 ...
"""

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import TensorDataset

from accel_train import fit, parse_config
from accel_train.tasks.vision import load_digits_tensors
from accel_train.launch import leave


@dataclass
class Options:
    samples: int = 300  # first N digits (300 leaves a short last window for most batch sizes)
    double: bool = False  # train in float64


def build(opts: Options):
    images, labels = load_digits_tensors()
    torch.manual_seed(1234)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(8 * 64, 10))
    if opts.double:
        model, images = model.double(), images.double()
    return model, TensorDataset(images[: opts.samples], labels[: opts.samples])


if __name__ == "__main__":
    cfg, opts = parse_config(options=Options)
    model, data = build(opts)
    fit(model, data, None, config=cfg, loss="cross_entropy", metrics=["accuracy"])
    leave(0)  # a launched script ends without Python's teardown (see accel_train.launch.leave)
