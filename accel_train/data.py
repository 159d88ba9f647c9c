"""Datasets in, DataLoaders out: a map-style `torch.utils.data.Dataset`, a `datasets.Dataset`, an iterable
dataset, or a ready DataLoader. Accelerate shards them across processes when they are prepared."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from .errors import UserError


def _is_hf_dataset(data: Any) -> bool:
    return type(data).__module__.split(".")[0] == "datasets"


def make_loader(data: Any, *, batch_size: int, shuffle: bool, collate_fn=None, num_workers: int = 0,
                split: str = "train", seed: int = 0) -> DataLoader:
    """A DataLoader over `data` (returned as is when it is one already).

    The loader gets its own random generator, so that starting an iterator never draws from the global RNG
    (which dropout uses): a run resumed mid-epoch then continues with the same random numbers.
    """
    if isinstance(data, DataLoader):
        return data
    if data is None or not (isinstance(data, (Dataset, IterableDataset)) or _is_hf_dataset(data)
                            or hasattr(data, "__getitem__")):
        raise UserError(f"the {split} data must be a torch Dataset, a datasets.Dataset or a DataLoader, "
                        f"not {type(data).__name__}.")
    if _is_hf_dataset(data) and collate_fn is None and hasattr(data, "with_format"):
        data = data.with_format("torch")
    if hasattr(data, "__len__") and not isinstance(data, IterableDataset) and len(data) == 0:
        raise UserError(f"the {split} dataset is empty: it needs at least one sample.")
    iterable = isinstance(data, IterableDataset) or (_is_hf_dataset(data) and not hasattr(data, "__len__"))
    return DataLoader(
        data,
        batch_size=batch_size,
        shuffle=shuffle and not iterable,
        collate_fn=collate_fn,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=num_workers > 0,
        drop_last=False,
        generator=torch.Generator().manual_seed(seed),
    )


def batches_per_process(loader) -> int | None:
    """The prepared loader's length on this process, or None for an iterable dataset."""
    try:
        return len(loader)
    except TypeError:
        return None


class TrainBatches:
    """The prepared training loader, yielding `(batch, valid)`: for each epoch, from any batch on.

    `valid` is None except on a padded last batch under DDP: to give every process a full last batch, Accelerate
    pads it with samples from the start of the epoch. The real ones come first in process order (the rule
    `gather_for_metrics` uses), so this process keeps the first `valid` samples of its batch.
    """

    def __init__(self, loader, accelerator, seed: int = 0):
        self.loader, self.accelerator, self.seed = loader, accelerator, seed
        self.current = loader
        total = getattr(loader, "total_batch_size", None)
        try:
            self.remainder = len(loader.dataset) % total if total else 0
        except TypeError:  # an iterable dataset: no padding to undo
            self.remainder = 0
        self.per_process = total // accelerator.num_processes if total else 0

    def __len__(self) -> int:
        return len(self.loader)

    def start_epoch(self, epoch: int, skip: int = 0) -> None:
        """Set the epoch's data order (seed + epoch) and skip the first `skip` batches (a resumed epoch)."""
        self.loader.set_epoch(epoch)
        if getattr(self.loader, "generator", None) is not None:
            self.loader.generator.manual_seed(self.seed * 1_000_003 + epoch)  # worker seeds depend on the epoch
        self.current = self.accelerator.skip_first_batches(self.loader, skip) if skip else self.loader

    def __iter__(self):
        loader, rank = self.current, self.accelerator.process_index
        padded = self.accelerator.num_processes > 1 and self.remainder > 0
        for batch in loader:
            if padded and loader.end_of_dataloader:
                yield batch, max(0, min(self.per_process, self.remainder - rank * self.per_process))
            else:
                yield batch, None


def dataset_labels(data: Any) -> torch.Tensor | None:
    """All labels of a dataset when they can be read without loading inputs (for a one-time range check)."""
    if isinstance(data, DataLoader):
        data = data.dataset
    if isinstance(data, torch.utils.data.TensorDataset) and len(data.tensors) >= 2:
        labels = data.tensors[-1]
        return labels if not labels.is_floating_point() else None
    targets = getattr(data, "targets", None)
    if targets is not None and not isinstance(targets, str):
        try:
            labels = torch.as_tensor(targets)
        except (TypeError, ValueError, RuntimeError):
            return None
        return labels if labels.dim() == 1 and not labels.is_floating_point() else None
    return None
