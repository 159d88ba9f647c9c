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
                split: str = "train") -> DataLoader:
    """A DataLoader over `data` (returned as is when it is one already)."""
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
    )


def batches_per_process(loader) -> int | None:
    """The prepared loader's length on this process, or None for an iterable dataset."""
    try:
        return len(loader)
    except TypeError:
        return None


def real_samples(loader, num_processes: int, process_index: int) -> int | None:
    """How many samples of this process's current batch are real: None (all) except on a padded last batch.

    To give every process a full last batch, Accelerate pads it with samples from the start of the epoch. The
    real ones come first in process order (the same rule `gather_for_metrics` uses to drop the padding), so this
    process keeps a prefix of its batch.
    """
    if num_processes == 1 or not getattr(loader, "end_of_dataloader", False) or getattr(loader, "remainder", -1) <= 0:
        return None
    per_process = loader.total_batch_size // num_processes
    return max(0, min(per_process, loader.remainder - process_index * per_process))


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
