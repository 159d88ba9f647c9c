"""Evaluate fixed (seeded) weights on all 1,797 digits with accel_train's `evaluate`; the main process writes
the result to the JSON file named on the command line."""

import json
import sys

import torch
from torch.utils.data import TensorDataset

from accel_train import Task, TrainConfig, evaluate
from accel_train.data import make_loader
from accel_train.tasks.vision import DigitsCNN, load_digits_tensors
from accel_train.launch import leave, make_accelerator, shutdown

if __name__ == "__main__":
    out, batch_size = sys.argv[1], int(sys.argv[2])
    images, labels = load_digits_tensors()
    torch.manual_seed(7)
    model = DigitsCNN(8)
    accelerator, _ = make_accelerator(TrainConfig())
    loader = make_loader(TensorDataset(images, labels), batch_size=batch_size, shuffle=False)
    model, loader = accelerator.prepare(model, loader)
    task = Task("cross_entropy", ["accuracy", "f1"])
    result = evaluate(accelerator, model, task, loader)
    if accelerator.is_main_process:
        with open(out, "w") as handle:
            json.dump({**result, "processes": accelerator.num_processes,
                       "confusion": task.confusion.matrix().tolist()}, handle)
    shutdown(accelerator)
    leave(0)  # a launched script ends without Python's teardown (see accel_train.launch.leave)
