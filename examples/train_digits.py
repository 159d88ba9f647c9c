"""Train the digits CNN: the `make demo` job, written as a script that builds its model and data.

    python examples/train_digits.py --epochs 5
    accelerate launch --config_file launch_configs/cpu_ddp.yaml examples/train_digits.py --output-dir runs/ddp
    accelerate launch --config_file launch_configs/bf16.yaml examples/train_digits.py --cpu true

Every TrainConfig flag works here (`--lr`, `--batch-size`, `--grad-accum`, `--scheduler`, ...), with
examples/configs/digits.yaml as the defaults.
"""

from dataclasses import dataclass
from pathlib import Path

import torch

from accel_train import fit, parse_config
from accel_train.jobs.digits import DigitsCNN, digits_splits


@dataclass
class DigitsOptions:
    channels: int = 32  # width of the first conv block
    val_fraction: float = 0.2  # stratified hold-out share


def main(argv=None):
    defaults = Path(__file__).parent / "configs" / "digits_script.yaml"
    cfg, opts = parse_config(argv, defaults=str(defaults), options=DigitsOptions)
    torch.manual_seed(cfg.seed)
    model = DigitsCNN(opts.channels)
    train_data, eval_data = digits_splits(opts.val_fraction, seed=cfg.seed)
    return fit(model, train_data, eval_data, loss="cross_entropy", metrics=["accuracy"], config=cfg, options=opts)


if __name__ == "__main__":
    main()
