"""A job for `accel-train verify` tests: the model of equivalence.py (no dropout, no batch norm) as a CLI job."""

from dataclasses import dataclass

import torch
from torch.utils.data import TensorDataset

from accel_train import Task
from accel_train.job import Job, Parts
from equivalence import Options, build


@dataclass
class Equivalence(Job):
    samples: int = 300  # first N digits
    data: str | None = None  # a torch.save'd (images, labels) file instead of scikit-learn's digits

    def build(self, seed: int) -> Parts:
        model, data = build(Options(samples=self.samples))
        if self.data:
            images, labels = torch.load(self.data, weights_only=True)
            data = TensorDataset(images[: self.samples], labels[: self.samples])
        return Parts(model, data, None, Task("cross_entropy", ["accuracy"]))
