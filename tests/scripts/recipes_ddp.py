"""Recipes under DDP: three full-batch steps (one window is the epoch) of class-weighted, smoothed cross-entropy over
a padded last batch, with an EMA and warm restarts every 2 optimizer steps, then the LR finder; each process writes what it holds, for
tests/test_recipes_distributed.py to compare.

    accelerate launch --config_file launch_configs/cpu_ddp.yaml tests/scripts/recipes_ddp.py OUT DIGITS.pt
"""

import json
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import TensorDataset

from accel_train import EMA, TrainConfig, fit, lr_find
from accel_train.launch import leave


def data(n: int = 13):
    """13 samples over 2 processes x batch 4: the last batch is padded with 3 repeated samples."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=generator)
    y = torch.tensor([0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 2, 2, 0][:n])
    return TensorDataset(x, y)


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(4, 3)


if __name__ == "__main__":
    out = Path(sys.argv[1])
    cfg = TrainConfig(optimizer="sgd", lr=1.0, momentum=0.0, batch_size=4, grad_accum=2, max_steps=3,
                      class_weights="1,2,4", label_smoothing=0.1, scheduler="cosine_restarts", restart_every=2,
                      min_lr=0.2, num_threads=1, progress=False, log_every=1, output_dir=str(out / "run"))
    ema = EMA(0.5)
    # fit leaves the process group at its end; here the finder runs in the same one after it (one launch, not two)
    sys.modules["accel_train.fit"].shutdown = lambda accelerator: [tracker.finish() for tracker in accelerator.trackers]
    fit(model(), data(), None, config=cfg, loss="cross_entropy", metrics=["accuracy"], ema=ema)
    rank = int(os.environ.get("RANK", "0"))
    save_file({k: v.contiguous() for k, v in ema.state_dict().items()}, str(out / f"ema_{rank}.safetensors"))
    images, labels = torch.load(sys.argv[2])
    result = lr_find(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), TensorDataset(images, labels), out=out / "finder",
                     config=TrainConfig(batch_size=16, num_threads=1, progress=False), num_steps=40)
    (out / f"finder_{rank}.json").write_text(json.dumps([result.suggestion, result.losses]))
    leave(0)
