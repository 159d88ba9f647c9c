"""Resume on a different number of processes: 2 -> 1 and 1 -> 2 with the same global batch end within float
tolerance of the uninterrupted run (same data order, same schedule, same epoch sums); another global batch is
refused with one line naming the flags that keep it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from accel_train import UserError, read_metrics, read_summary
from support import SCRIPTS, check, launch, run_python

JOB = str(SCRIPTS / "resume_job.py")
pytestmark = pytest.mark.multiprocess
# 64 samples per optimizer step either way; the position in an epoch is counted in different micro-batches
LAYOUT = {1: ["--batch-size", "16", "--grad-accum", "4"], 2: ["--batch-size", "16", "--grad-accum", "2"]}


def _run(digits_file: str, processes: int, run: Path, *extra: str):
    args = [JOB, "--data", digits_file, "--dropout", "0", *LAYOUT[processes], "--output-dir", str(run), *extra]
    return launch(args) if processes == 2 else run_python(args)


def _close(full: Path, resumed: Path) -> None:
    wa, wb = load_file(full / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert wa.keys() == wb.keys()
    for key in set(wa) - {"batches"}:  # the job's counter of this process's micro-batches differs, by design
        torch.testing.assert_close(wb[key], wa[key], rtol=1e-5, atol=1e-6)
    rows_a, rows_b = read_metrics(full), read_metrics(resumed)
    assert [r["step"] for r in rows_b] == [r["step"] for r in rows_a] == sorted(r["step"] for r in rows_a)
    for a, b in zip(rows_a, rows_b):  # every logged loss and learning rate, the epochs' sums and accuracies too
        assert a.keys() == b.keys(), (a, b)
        for key, value in a.items():
            if key.startswith(("perf/", "sys/", "time/", "gpu/")):  # timings and machine figures
                continue
            assert b[key] == (pytest.approx(value, rel=1e-4, abs=1e-6) if isinstance(value, float) else value), key


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, digits_file) -> Path:
    full = tmp_path_factory.mktemp("reshard") / "full"
    check(_run(digits_file, 1, full))
    assert read_summary(full)["steps"] == 20
    return full


@pytest.mark.slow
@pytest.mark.parametrize(("before", "after"), [(2, 1), (1, 2)])
def test_resume_on_another_process_count(tmp_path, digits_file, uninterrupted, before, after):
    run = tmp_path / "run"
    check(_run(digits_file, before, run, "--stop-at-step", "6"))  # mid-epoch 2: 2 of its 4 steps done
    check(_run(digits_file, after, run, "--resume", "auto"))
    assert read_summary(run)["processes"] == after
    _close(uninterrupted, run)


@pytest.mark.slow
def test_another_global_batch_is_refused(tmp_path, digits_file):
    run = tmp_path / "run"
    check(_run(digits_file, 1, run, "--stop-at-step", "3"))
    proc = run_python([JOB, "--data", digits_file, "--batch-size", "16", "--grad-accum", "2", "--output-dir", str(run),
                       "--resume", "auto"])
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1] == (
        f"accel_train: error: --resume {run}/checkpoints/step_0000003: the checkpoint trained with a global batch "
        "of 64 (16 per device x 1 process(es) x 4 accumulation); this launch gives 32 (16 x 1 x 2), which would "
        "change the training. Keep 64: --batch-size 32 with --grad-accum 2.")


def test_the_position_in_an_epoch_is_converted_through_samples(tmp_path):
    from accel_train.checkpoint import Progress
    from accel_train.reshard import check_layout

    for rank in range(2):
        (tmp_path / f"meter_{rank}.safetensors").write_bytes(b"")
    progress = Progress(step=6, batch_in_epoch=4, batch_size=16, grad_accum=2)  # 4 x 16 x 2 = 128 samples trained
    check_layout(progress, tmp_path, batch_size=16, grad_accum=4, processes=1)
    assert progress.batch_in_epoch == 8
    check_layout(Progress(batch_in_epoch=4, batch_size=16, grad_accum=2), tmp_path, 32, 2, 1)  # 128 / 32: 4
    with pytest.raises(UserError) as error:  # 2 x 16 x 2 = 64 -> 1 x 16 x 2 = 32
        check_layout(Progress(batch_size=16, grad_accum=2), tmp_path, 16, 2, 1)
    assert str(error.value) == (
        f"--resume {tmp_path}: the checkpoint trained with a global batch of 64 (16 per device x 2 process(es) x 2 "
        "accumulation); this launch gives 32 (16 x 1 x 2), which would change the training. Keep 64: --batch-size "
        "32 with --grad-accum 2.")
