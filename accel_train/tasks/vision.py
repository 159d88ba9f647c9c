"""Image classification: a small CNN on scikit-learn's handwritten digits (`Digits`, offline), and ResNet-18 on
CIFAR-10 with crop + flip augmentation (`Cifar10`). The task is the plain `(x, y)` batch with cross-entropy."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import TensorDataset

from ..errors import UserError
from ..job import Job, Parts
from ..task import Task

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DIGIT_CAPTION = "a handwritten digit {}"  # the digits' caption in the multimodal jobs


class DigitsCNN(nn.Module):
    """Two 3x3 conv blocks and a linear head: 8x8x1 -> 4x4x2c -> 10 logits."""

    def __init__(self, channels: int = 32, num_classes: int = 10, batch_norm: bool = True, dropout: float = 0.2):
        super().__init__()
        self.num_classes = num_classes
        norm = nn.BatchNorm2d if batch_norm else (lambda width: nn.Identity())
        self.features = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1), norm(channels), nn.ReLU(),
            nn.Conv2d(channels, 2 * channels, 3, padding=1), norm(2 * channels), nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(2 * channels * 16, num_classes))

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
    batch_norm: bool = True  # batch norm after each conv (per-process statistics under DDP)
    dropout: float = 0.2  # dropout before the linear head

    def build(self, seed: int) -> Parts:
        train_data, eval_data = digits_splits(self.val_fraction, seed)
        model = DigitsCNN(self.channels, batch_norm=self.batch_norm, dropout=self.dropout)
        return Parts(model, train_data, eval_data, task=Task("cross_entropy", ["accuracy"], class_names=DIGIT_NAMES))


# -- CIFAR-10 -------------------------------------------------------------------------------------------------------

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def resnet18_cifar(num_classes: int = 10) -> nn.Module:
    """torchvision's ResNet-18 with a 3x3 stride-1 first conv and no max-pool, as is usual for 32x32 images."""
    from torchvision.models import resnet18

    model = resnet18(num_classes=num_classes)
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    model.num_classes = num_classes
    return model


def cifar10_splits(root: str, download: bool = False, augment: bool = True):
    """torchvision's CIFAR10 train and test sets from `root` (downloaded there when `download`)."""
    from torchvision import datasets, transforms

    normalize = [transforms.ToTensor(), transforms.Normalize(MEAN, STD)]
    train_tf = [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()] if augment else []
    try:
        train = datasets.CIFAR10(root, train=True, download=download, transform=transforms.Compose(train_tf + normalize))
        test = datasets.CIFAR10(root, train=False, download=download, transform=transforms.Compose(normalize))
    except RuntimeError as error:
        raise UserError(f"CIFAR-10 not found under {root} ({error}). Set download to true to fetch it (needs a "
                        "network), or root to the folder holding cifar-10-batches-py/.") from None
    return train, test


@dataclass
class Cifar10(Job):
    """ResNet-18 on CIFAR-10 with crop/flip augmentation."""

    root: str = "data"  # folder that holds (or will hold) cifar-10-batches-py/
    download: bool = False  # fetch the dataset into `root` first (needs a network)
    augment: bool = True  # random crop (padding 4) and horizontal flip on training images

    def build(self, seed: int) -> Parts:
        train, test = cifar10_splits(self.root, self.download, self.augment)
        return Parts(resnet18_cifar(10), train, test, task=Task("cross_entropy", ["accuracy"], class_names=train.classes))
