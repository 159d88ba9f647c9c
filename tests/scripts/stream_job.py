"""A small job on streamed data for the mid-epoch resume tests: a linear model with dropout on 22 samples read
as a stream, with --max-steps; the model writes the ids of every training micro-batch it sees to
`<ids-dir>/rank<R>.jsonl` (one line per micro-batch), so that a stopped and resumed run can be compared with an
uninterrupted one sample by sample.

    python tests/scripts/stream_job.py --stream torch|hf|shard --ids-dir DIR --output-dir RUN --max-steps 12 ...

--stream torch  a torch IterableDataset, shuffled anew each epoch (`set_epoch`), deterministic per epoch
--stream hf     a `datasets` IterableDataset (4 shards, shard order and a buffer of 6 shuffled with a seed)
--stream shard  the hf stream cut per process (`split_dataset_by_node`) in a repeating `ProcessShard`
"""

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from accel_train import Task, fit, parse_config
from accel_train.data import ProcessShard
from accel_train.errors import exit_on_user_error
from accel_train.launch import leave

SAMPLES = 22


@dataclass
class Options:
    stream: str = "torch"  # torch, hf or shard
    ids_dir: str = "ids"


def columns() -> dict:
    gen = torch.Generator().manual_seed(0)
    return {"x": torch.randn(SAMPLES, 4, generator=gen), "labels": torch.randint(0, 3, (SAMPLES,), generator=gen),
            "id": torch.arange(SAMPLES)}


class TorchStream(torch.utils.data.IterableDataset):
    """Samples in an order drawn from (seed, epoch): the same on every pass of one epoch."""

    def __init__(self):
        self.data, self.epoch = columns(), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        worker = torch.utils.data.get_worker_info()  # DataLoader workers: each reads every n-th sample
        order = torch.randperm(SAMPLES, generator=torch.Generator().manual_seed(1000 + self.epoch)).tolist()
        for i in order[worker.id::worker.num_workers] if worker else order:
            yield {key: value[i] for key, value in self.data.items()}


def hf_stream():
    import datasets

    data = {key: value.tolist() for key, value in columns().items()}
    return datasets.Dataset.from_dict(data).to_iterable_dataset(num_shards=4).shuffle(seed=7, buffer_size=6)


def stream(kind: str):
    if kind == "torch":
        return TorchStream()
    if kind == "hf":
        return hf_stream()
    from datasets.distributed import split_dataset_by_node

    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    shard = split_dataset_by_node(hf_stream(), rank=rank, world_size=world).with_format("torch")
    return ProcessShard(shard, repeat=True)


class Recorder(nn.Module):
    """A linear classifier with dropout that appends the ids of each training batch to its file."""

    def __init__(self, ids_dir: str):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Dropout(0.3), nn.Linear(4, 3))
        Path(ids_dir).mkdir(parents=True, exist_ok=True)
        self.file = Path(ids_dir) / f"rank{os.environ.get('RANK', '0')}.jsonl"

    def forward(self, x, id):
        if self.training:
            with open(self.file, "a") as handle:
                handle.write(json.dumps(id.tolist()) + "\n")
        return self.net(x.float())


if __name__ == "__main__":
    defaults = ["--optimizer", "adamw", "--lr", "0.05", "--scheduler", "cosine_warmup", "--warmup-steps", "2",
                "--grad-accum", "2", "--batch-size", "4", "--max-steps", "12", "--checkpoint-every", "3",
                "--log-every", "1", "--progress", "false",
                "--num-threads", "1"]  # as resume_job.py: bitwise equality needs one thread count in every run
    cfg, opts = parse_config(defaults + __import__("sys").argv[1:], options=Options)
    with exit_on_user_error():
        fit(Recorder(opts.ids_dir), stream(opts.stream), config=cfg, task=Task("cross_entropy", ["accuracy"]))
    leave(0)
