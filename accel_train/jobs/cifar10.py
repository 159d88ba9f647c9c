"""CIFAR-10: ResNet-18 (with the usual 3x3 stem for 32x32 images) and random crop + flip augmentation."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..errors import UserError
from ..task import Task
from . import Job, Parts

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
        return Parts(resnet18_cifar(10), train, test, task=Task("cross_entropy", ["accuracy"]))
