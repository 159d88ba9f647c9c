"""Train the digits CNN: the `make demo` job, written as a script that builds its model and data in plain sight.
Its plain-PyTorch twin is examples/train_plain.py.

    python examples/train_digits.py --epochs 5 --job.channels 16
    accelerate launch --config_file launch_configs/cpu_ddp.yaml examples/train_digits.py --output-dir runs/ddp
    accelerate launch --config_file launch_configs/bf16.yaml examples/train_digits.py --cpu true

The job file examples/configs/digits.yaml gives the defaults, and the script takes the same flags as
`accel-train train --config examples/configs/digits.yaml`: every TrainConfig flag (`--lr`, `--batch-size`,
`--grad-accum`, `--scheduler`, ...) and the job's own (`--job.channels`, `--job.val-fraction`).
"""

from pathlib import Path

import torch

from accel_train import exit_on_user_error, fit, parse_config
from accel_train.launch import leave
from accel_train.tasks.vision import Digits, DigitsCNN, digits_splits

JOB_FILE = Path(__file__).parent / "configs" / "digits.yaml"


def main(argv=None):
    cfg, job = parse_config(argv, defaults=str(JOB_FILE), options=Digits)
    torch.manual_seed(cfg.seed)  # the model's initial weights
    model = DigitsCNN(job.channels)
    train_data, eval_data = digits_splits(job.val_fraction, seed=cfg.seed)  # TensorDatasets of (image, label)
    return fit(model, train_data, eval_data, loss="cross_entropy", metrics=["accuracy"], config=cfg, options=job)


if __name__ == "__main__":
    with exit_on_user_error():
        main()
    leave(0)  # end without Python's teardown, 1-2 s after a run (see accel_train.launch.leave)
