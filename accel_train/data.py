"""Datasets in, DataLoaders out: a map-style `torch.utils.data.Dataset`, a `datasets.Dataset`, an iterable
dataset, or a ready DataLoader. Accelerate shards them across processes when they are prepared, except a
`ProcessShard`: a stream each process already reads its own part of."""

from __future__ import annotations

import copy
import time
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from .errors import UserError
from .internals import mark_prepared


_END = object()


def _is_hf_dataset(data: Any) -> bool:
    return type(data).__module__.split(".")[0] == "datasets"


def make_loader(data: Any, *, batch_size: int, shuffle: bool, collate_fn=None, num_workers: int = 0,
                split: str = "train", seed: int = 0, pin_memory: bool | None = None) -> DataLoader:
    """A DataLoader over `data` (returned as is when it is one already).

    The loader gets its own random generator, so that starting an iterator never draws from the global RNG
    (which dropout uses): a run resumed mid-epoch then continues with the same random numbers. `pin_memory`
    defaults to on when a GPU is present.
    """
    pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
    if isinstance(data, DataLoader):
        return data
    if isinstance(data, ProcessShard):
        return _shard_loader(data, batch_size, collate_fn, num_workers, pin_memory, seed)
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
        pin_memory=pin_memory,
        # workers live across epochs (no start-up cost per epoch), except a stream's: they would keep the copy of the
        # stream they started with, deaf to `set_epoch`, and every epoch would repeat the first one's order
        persistent_workers=num_workers > 0 and not iterable,
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
        _keep_global_rng(loader)
        self.current = loader
        self.position = 0  # micro-batches of the current epoch handed out so far, on this process
        self.wait_s = 0.0  # seconds spent waiting for the next batch, over the run
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
        self.position = skip

    @property
    def done_in_epoch(self) -> int:
        """Micro-batches of the current epoch trained so far (0 once the epoch's last one is out): where a resumed
        run starts this epoch again."""
        return 0 if self.current.end_of_dataloader else self.position

    def __iter__(self):
        loader, rank = self.current, self.accelerator.process_index
        padded = self.accelerator.num_processes > 1 and self.remainder > 0
        batches = iter(loader)
        while True:
            asked = time.perf_counter()
            batch = next(batches, _END)
            self.wait_s += time.perf_counter() - asked  # host time waiting for the loader (monitor.StepClock)
            if batch is _END:
                return
            self.position += 1
            if padded and loader.end_of_dataloader:
                yield batch, max(0, min(self.per_process, self.remainder - rank * self.per_process))
            else:
                yield batch, None


def _keep_global_rng(loader) -> None:
    """Give a prepared stream's loader its own generator where Accelerate dropped it (a stream that the main process
    reads and sends out): starting each iterator would otherwise draw from the global RNG, which dropout uses, and a
    run resumed mid-epoch (a new iterator where the uninterrupted run had none) would drift from there on."""
    if (getattr(loader, "generator", None) is None and hasattr(loader, "base_dataloader")
            and isinstance(loader.dataset, IterableDataset)):
        loader.base_dataloader.generator = torch.Generator()  # seeded per epoch by `start_epoch`


def dataset_labels(data: Any) -> torch.Tensor | None:
    """All labels of a dataset when they can be read without loading inputs (for a one-time range check)."""
    if isinstance(data, DataLoader):
        data = data.dataset
    if isinstance(data, torch.utils.data.TensorDataset) and len(data.tensors) >= 2:
        labels = data.tensors[-1]
        return labels if not labels.is_floating_point() else None
    targets = getattr(data, "targets", None)
    if _is_hf_dataset(data) and hasattr(data, "__len__") and "labels" in (getattr(data, "column_names", None) or ()):
        targets = data["labels"]  # a map-style datasets.Dataset: one column, read from Arrow
    if targets is not None and not isinstance(targets, str):
        try:
            labels = torch.as_tensor(targets)
        except (TypeError, ValueError, RuntimeError):
            return None
        return labels if labels.dim() == 1 and not labels.is_floating_point() else None
    return None


class ProcessShard(IterableDataset):
    """The part of a stream that this process reads itself, such as a streaming `datasets.IterableDataset` after
    `datasets.distributed.split_dataset_by_node`.

    Accelerate would split such a stream again (or read all of it on the main process and send out batches, which
    fails on batches padded to different lengths); a shard is only moved to the device. Processes may hold
    different numbers of samples, so a training shard repeats (`repeat=True`, train with --max-steps: every
    process then takes the same number of steps), and `evaluate` adds up the processes' sums once at the end
    instead of gathering every batch. A run resumed mid-stream reads the shard again from its start and skips what
    was trained, which is exact when each pass's order depends only on its epoch (`set_epoch`).
    """

    def __init__(self, dataset: Any, repeat: bool = False):
        self.dataset, self.repeat, self.epoch = dataset, repeat, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __iter__(self):
        epoch, dataset, worker = self.epoch, self.dataset, torch.utils.data.get_worker_info()
        if worker is not None and self.repeat:
            # DataLoader workers share a `datasets` stream's epoch (in shared memory): one worker starting its next
            # pass would reshuffle the others' (in an order that depends on timing); each counts its own passes
            dataset = copy.deepcopy(dataset)
        while True:
            empty = True
            for sample in dataset:
                empty = False
                yield sample
            if empty and self.repeat and worker is None:
                raise UserError("this process's part of the training stream is empty: use fewer processes, or a "
                                "stream with at least as many examples (or files) as processes.")
            if empty or not self.repeat:
                return
            epoch += 1  # the next pass over the shard is shuffled anew
            if hasattr(dataset, "set_epoch"):
                dataset.set_epoch(epoch)


def _shard_loader(data: ProcessShard, batch_size: int, collate_fn, num_workers: int, pin_memory: bool,
                  seed: int) -> DataLoader:
    """A loader over this process's own shard, prepared by Accelerate as for one process (batches moved to the
    device, nothing split) and marked as prepared, so that `accelerator.prepare` leaves it as it is."""
    from accelerate.data_loader import prepare_data_loader
    from accelerate.state import PartialState

    loader = DataLoader(data, batch_size=batch_size, collate_fn=collate_fn, num_workers=num_workers,
                        pin_memory=pin_memory, generator=torch.Generator().manual_seed(seed))
    loader = prepare_data_loader(loader, PartialState().device, num_processes=1, process_index=0,
                                 put_on_device=True, dispatch_batches=False)
    mark_prepared(loader)
    return loader


def reads_own_shard(loader: Any) -> bool:
    """Whether each process reads its own part of this loader's data (a `ProcessShard`)."""
    return isinstance(getattr(loader, "dataset", None), ProcessShard)
