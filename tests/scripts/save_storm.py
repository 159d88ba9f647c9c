"""SIGKILL a process that saves checkpoints back to back, at random moments, and check each time that resuming
would find a complete checkpoint: `save_storm.py FOLDER KILLS` writes FOLDER/report.json."""

import json
import os
import random
import signal
import sys
import time
from pathlib import Path

import torch
from torch import nn

from accel_train import TrainConfig
from accel_train.checkpoint import MARKER, Checkpointer, Progress, resolve_resume
from accel_train.launch import make_accelerator
from accel_train.metrics import Meter, MetricSet

if __name__ == "__main__":
    run_dir, kills = Path(sys.argv[1]), int(sys.argv[2])
    torch.set_num_threads(1)
    accelerator, _ = make_accelerator(TrainConfig(cpu=True))
    model = accelerator.prepare(nn.Sequential(nn.Linear(512, 1024), nn.Linear(1024, 512)))  # ~4 MB
    meter = Meter(accelerator, MetricSet([]))
    checkpointer = Checkpointer(run_dir, keep=2, background=True)
    rng = random.Random(0)
    resumed_ok = mid_save = 0
    step = 0
    for _ in range(kills):
        child = os.fork()
        if child == 0:  # save forever: each checkpoint a new step
            while True:
                step += 1
                with torch.no_grad():
                    model[0].weight.fill_(step)
                checkpointer.save(accelerator, Progress(step=step), f"step_{step:07d}", model, meter)
        time.sleep(rng.uniform(0.05, 0.4))
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
        mid_save += any(p.name.startswith(".tmp-") for p in checkpointer.root.iterdir())
        latest = resolve_resume("auto", run_dir)  # what --resume auto would pick
        step = int(latest.name[5:])
        assert (latest / MARKER).is_file()
        accelerator.load_state(str(latest))  # loads completely
        assert float(model[0].weight[0, 0]) == step, "the checkpoint holds the step it names"
        assert len([p for p in checkpointer.root.iterdir() if (p / MARKER).exists()]) >= 1
        resumed_ok += 1
    (run_dir / "report.json").write_text(json.dumps({"kills": kills, "resumed_ok": resumed_ok,
                                                     "killed_mid_save": mid_save}))
