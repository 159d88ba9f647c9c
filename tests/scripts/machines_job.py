"""equivalence.py's deterministic job with a validation set and two delays, for the several-machines tests.

    accelerate launch --config_file launch_configs/multi_node.yaml --machine_rank R tests/scripts/machines_job.py ...

--slow S             sleep S seconds in every training micro-batch (a kill or a link down lands mid-run)
--slow-eval S        the process of rank --slow-eval-rank sleeps S seconds in the first validation (a slow healthy step)
"""

import os
import time
from dataclasses import dataclass

from torch import nn
from torch.utils.data import TensorDataset

from accel_train import fit, parse_config
from accel_train.errors import exit_on_user_error
from accel_train.launch import leave
from accel_train.tasks.vision import load_digits_tensors
from equivalence import Options as Base
from equivalence import build


@dataclass
class Options(Base):
    slow: float = 0.0
    slow_eval: float = 0.0
    slow_eval_rank: int = 1


class Delays(nn.Module):
    """Wraps the model: sleeps where the options ask (no parameters of its own: the same weights)."""

    def __init__(self, model: nn.Module, opts: Options):
        super().__init__()
        self.model, self.opts = model, opts
        self.rank = int(os.environ.get("RANK", "0"))

    def forward(self, x):
        if not self.training:
            if self.rank == self.opts.slow_eval_rank and self.opts.slow_eval:
                time.sleep(self.opts.slow_eval)
                self.opts.slow_eval = 0.0
            return self.model(x)
        time.sleep(self.opts.slow)
        return self.model(x)


if __name__ == "__main__":
    cfg, opts = parse_config(options=Options)
    model, data = build(opts)
    images, labels = load_digits_tensors()
    val = TensorDataset(images[1500:1564], labels[1500:1564])
    with exit_on_user_error():
        fit(Delays(model, opts), data, val, config=cfg, loss="cross_entropy", metrics=["accuracy"])
    leave(0)
