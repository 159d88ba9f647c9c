"""Count DDP's gradient all-reduces with a comm hook: `comm_count.py OUT_DIR STEPS ACCUM` trains the digits CNN
for STEPS optimizer steps of ACCUM micro-batches under the launcher; each rank writes its count to OUT_DIR."""

import json
import os
import sys
from pathlib import Path

import accelerate
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import TensorDataset

from accel_train import TrainConfig, fit
from accel_train.tasks.vision import DigitsCNN, load_digits_tensors
from accel_train.launch import leave

calls = {"allreduce": 0}


def counting_hook(state, bucket):
    calls["allreduce"] += 1
    return torch.distributed.algorithms.ddp_comm_hooks.default_hooks.allreduce_hook(None, bucket)


original = accelerate.Accelerator.prepare_model


def prepare_model(self, model, *args, **kwargs):
    model = original(self, model, *args, **kwargs)
    if isinstance(model, DistributedDataParallel):
        model.register_comm_hook(None, counting_hook)
    return model


if __name__ == "__main__":
    out, steps, accum = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    accelerate.Accelerator.prepare_model = prepare_model
    images, labels = load_digits_tensors()
    torch.manual_seed(0)
    fit(DigitsCNN(8), TensorDataset(images[:800], labels[:800]), metrics=[],
        config=TrainConfig(output_dir=str(out / "run"), max_steps=steps, batch_size=8, grad_accum=accum,
                           progress=False, log_every=steps))
    rank = int(os.environ.get("RANK", "0"))  # fit has left the process group by now
    (out / f"count_{rank}.json").write_text(json.dumps(calls))
    leave(0)  # a launched script ends without Python's teardown (see accel_train.launch.leave)
