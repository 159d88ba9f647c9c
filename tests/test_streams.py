"""Streamed data resumes mid-epoch with exactly the samples not yet trained: a torch IterableDataset, a `datasets`
IterableDataset (shards and a shuffle buffer, shuffled with a seed) and a repeating `ProcessShard` per process
under 2-process DDP are stopped mid-epoch at a checkpoint, resumed in a new process, and compared with an
uninterrupted run: the sample ids of every micro-batch, every logged value, the final weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from accel_train import read_metrics
from support import SCRIPTS, check, launch, run_python

JOB = str(SCRIPTS / "stream_job.py")
STOP = 7  # of 12 optimizer steps: 6 micro-batches of 4 per epoch (22 samples), accumulation 2
pytestmark = pytest.mark.multiprocess


def _train(root: Path, name: str, stream: str, *flags: str, ddp: bool = False) -> Path:
    args = [JOB, "--stream", stream, "--ids-dir", str(root / f"{name}_ids"), "--output-dir", str(root / name), *flags]
    check(launch(args) if ddp else run_python(args))
    return root / name


def _stopped_and_resumed(root: Path, stream: str, *flags: str, ddp: bool = False,
                         stop: int = STOP) -> tuple[Path, Path, tuple]:
    """The uninterrupted run; a run stopped at step `stop` (a checkpoint, as on SIGTERM) then resumed; and the
    (epoch, batch in epoch) that the checkpoint resumed from."""
    full = _train(root, "full", stream, *flags, ddp=ddp)
    resumed = _train(root, "resumed", stream, "--stop-at-step", str(stop), *flags, ddp=ddp)
    progress = json.loads((resumed / "checkpoints" / f"step_{stop:07d}" / "progress.json").read_text())
    _train(root, "resumed", stream, "--resume", "auto", *flags, ddp=ddp)
    return full, resumed, (progress["epoch"], progress["batch_in_epoch"])


def _ids(run: Path, rank: int = 0) -> list[list[int]]:
    """The sample ids of each training micro-batch, in order, over every part of the run."""
    lines = (run.parent / f"{run.name}_ids" / f"rank{rank}.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def _logged(run: Path) -> list[dict]:
    """The logged values the run computes, without the measured ones (times, speeds, memory)."""
    return [{k: v for k, v in row.items() if not k.startswith(("perf/", "sys/", "time/", "gpu/"))}
            for row in read_metrics(run)]


WORKERS = [pytest.param(stream, 2, marks=pytest.mark.slow) for stream in ("torch", "hf")]  # 2 s more a run


@pytest.mark.parametrize("stream, workers", [("torch", 0), ("hf", 0), *WORKERS])
def test_stream_resumed_mid_epoch_trains_exactly_the_samples_left(tmp_path, stream, workers):
    if stream == "hf":
        pytest.importorskip("datasets")
    full, resumed, position = _stopped_and_resumed(tmp_path, stream, "--num-workers", str(workers))
    assert position == (2, 2), "stopped mid-epoch: epoch 3 resumes at its 3rd micro-batch"
    ids = _ids(full)
    assert len(ids) == 24, "4 epochs of 6 micro-batches"
    epochs = [sorted(sum(ids[i:i + 6], [])) for i in range(0, 24, 6)]
    assert all(epoch == list(range(22)) for epoch in epochs), "each epoch reads every sample once"
    assert ids[0:6] != ids[6:12], "each epoch is shuffled anew (set_epoch reaches the workers)"
    assert _ids(resumed) == ids, "the resumed run trains the same samples in the same order, none twice"
    assert _logged(resumed) == _logged(full)  # per-step losses, LR, grad norms, epoch metrics
    a, b = load_file(full / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("kind", ["dispatched", "shard"])
def test_stream_loader_never_draws_from_the_global_rng(kind):
    """Starting a stream's iterator (as a resumed run does mid-epoch) leaves the RNG that dropout uses as it was."""
    from accel_train import TrainConfig
    from accel_train.data import ProcessShard, TrainBatches, make_loader
    from accel_train.launch import make_accelerator
    from stream_job import TorchStream

    accelerator = make_accelerator(TrainConfig())[0]  # as fit builds it
    data = TorchStream() if kind == "dispatched" else ProcessShard(TorchStream(), repeat=True)
    batches = TrainBatches(accelerator.prepare(make_loader(data, batch_size=4, shuffle=True)), accelerator)
    batches.start_epoch(0, skip=1)
    before = torch.get_rng_state()
    next(iter(batches))
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.parametrize("stream, workers, stop, position, batches", [
    ("shard", 0, STOP, (0, 14), 24),  # each process reads its own repeating part: 14 batches into one endless epoch
    pytest.param("shard", 2, STOP, (0, 14), 24, marks=pytest.mark.slow),  # each worker repeats its own part
    pytest.param("hf", 0, 3, (1, 2), 18, marks=pytest.mark.slow)])  # the main process reads, Accelerate sends out
def test_ddp_stream_resumed_mid_epoch_equals_uninterrupted(tmp_path, stream, workers, stop, position, batches):
    """2 processes: per-process shards of the stream (`split_dataset_by_node` in a `ProcessShard`), or one stream
    that Accelerate's dispatcher splits. After a mid-epoch stop and a resume, every process trains the same samples
    as in the uninterrupted run, and the logged values and weights agree within 1e-6."""
    pytest.importorskip("datasets")
    full, resumed, resumed_at = _stopped_and_resumed(tmp_path, stream, "--num-workers", str(workers), ddp=True,
                                                     stop=stop)
    assert resumed_at == position
    for rank in (0, 1):
        assert len(_ids(full, rank)) == batches and _ids(resumed, rank) == _ids(full, rank), rank
    assert set(sum(_ids(full, 0)[:3], [])).isdisjoint(sum(_ids(full, 1)[:3], [])), "the processes read apart"
    rows_a, rows_b = _logged(full), _logged(resumed)
    assert [r["step"] for r in rows_a] == [r["step"] for r in rows_b]
    for a, b in zip(rows_a, rows_b):
        assert a.keys() == b.keys() and all(a[k] == pytest.approx(b[k], abs=1e-6) for k in a), a["step"]
    a, b = load_file(full / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-6, rtol=0) for k in a)


def test_datasets_state_dict_loses_a_shuffle_buffer():
    """Why a stream is resumed by reading it again and skipping what was trained rather than with `datasets`'
    own `state_dict`: for a stream shuffled through a buffer, `datasets` documents that the buffer's samples are
    lost on resume, and this stream then gives other samples than the uninterrupted one."""
    pytest.importorskip("datasets")
    from stream_job import hf_stream

    full = [int(x["id"]) for x in hf_stream()]
    stream = hf_stream()
    samples = iter(stream)
    first = [int(next(samples)["id"]) for _ in range(7)]
    state = stream.state_dict()
    again = hf_stream()
    again.load_state_dict(state)
    assert first + [int(x["id"]) for x in again] != full
