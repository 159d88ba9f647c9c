"""Handwritten digits: a small CNN on the 1,797 8x8 images that ship with scikit-learn (10 classes)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import TensorDataset

from ..errors import UserError
from ..task import Task
from . import Job, Parts


class DigitsCNN(nn.Module):
    """Two 3x3 conv blocks and a linear head: 8x8x1 -> 4x4x2c -> 10 logits."""

    def __init__(self, channels: int = 32, num_classes: int = 10):
        super().__init__()
        self.num_classes = num_classes
        self.features = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU(),
            nn.Conv2d(channels, 2 * channels, 3, padding=1), nn.BatchNorm2d(2 * channels), nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(2 * channels * 16, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def load_digits_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 images as float [N, 1, 8, 8] in [0, 1], and labels [N]."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    return images, torch.tensor(digits.target, dtype=torch.long)


def digits_splits(val_fraction: float = 0.2, seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    """A stratified train/validation split of the digits, fixed by `seed`."""
    from sklearn.model_selection import train_test_split

    if not 0.0 < val_fraction < 1.0:
        raise UserError(f"val_fraction must be between 0 and 1 (got {val_fraction}).")
    images, labels = load_digits_tensors()
    train_idx, val_idx = train_test_split(torch.arange(len(labels)).numpy(), test_size=val_fraction,
                                          random_state=seed, stratify=labels.numpy())
    train_idx, val_idx = torch.as_tensor(train_idx), torch.as_tensor(val_idx)
    return (TensorDataset(images[train_idx], labels[train_idx]), TensorDataset(images[val_idx], labels[val_idx]))


@dataclass
class Digits(Job):
    """Small CNN on scikit-learn's handwritten digits."""

    val_fraction: float = 0.2  # share of the images held out for validation (stratified)
    channels: int = 32  # width of the first conv block

    def build(self, seed: int) -> Parts:
        train_data, eval_data = digits_splits(self.val_fraction, seed)
        return Parts(DigitsCNN(self.channels), train_data, eval_data, task=Task("cross_entropy", ["accuracy"]))

