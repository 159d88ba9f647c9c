"""accel_train: one readable training loop on Hugging Face Accelerate.

    from accel_train import TrainConfig, fit
    summary = fit(model, train_data, eval_data, loss="cross_entropy", metrics=["accuracy"],
                  config=TrainConfig(epochs=5, batch_size=64))

The same script runs under `python train.py` and `accelerate launch train.py` on any launch config.
"""

from .config import TrainConfig, parse_config
from .diagnosis import diagnose
from .ema import EMA
from .errors import UserError, exit_on_user_error
from .fit import fit
from .loop import evaluate, train_one_epoch, train_step
from .lr_find import LRFindResult, lr_find
from .metrics import Metric, MetricSet
from .run_folder import read_metrics, read_summary
from .task import LOSSES, Output, Task

__version__ = "0.1.0"
__all__ = [
    "EMA", "LOSSES", "LRFindResult", "Metric", "MetricSet", "Output", "Task", "TrainConfig", "UserError", "diagnose",
    "evaluate", "exit_on_user_error", "fit", "lr_find", "parse_config", "read_metrics", "read_summary",
    "train_one_epoch", "train_step",
]
