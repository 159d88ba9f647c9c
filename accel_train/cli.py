"""The command line: argv -> config -> job -> fit. The only module that reads sys.argv.

    accel-train train --config examples/configs/digits.yaml [--epochs 5 --lr 1e-3 ...]
    accelerate launch --config_file launch_configs/cpu_ddp.yaml -m accel_train train --config ...
"""

from __future__ import annotations

import importlib
import sys

from .errors import EXIT_USER_ERROR, UserError, closest, report

USAGE = """usage: accel-train train --config JOB.yaml [--key value ...]
       accel-train verify --config JOB.yaml [--launch-config launch_configs/cpu_ddp.yaml] [--steps 8]
       accel-train diagnose --config JOB.yaml [--overfit-steps 50]
       accel-train plot|report RUN_DIR [--out PATH]
       accel-train compare RUN_A RUN_B ... [--out DIR]
       accel-train lr-find --config JOB.yaml [--start-lr 1e-7 --end-lr 10 --num-steps 200 --out DIR]
       accel-train launch --config_file launch_configs/<mode>.yaml -m accel_train train --config JOB.yaml

commands:
  train    train the job a YAML file describes; every key is also a flag (--epochs 5, --batch-size 32)
  verify   prove on your job: N processes == 1 process, resumed == uninterrupted, precision in effect
  diagnose check the job on one batch before training: data, labels, loss, gradients, LR, overfitting
  plot     PNG curves (and the confusion matrix) of a run folder, into RUN_DIR/plots/
  report   one self-contained HTML page of a run: RUN_DIR/report.html
  compare  several runs' curves on shared axes, and a table of their best and final metrics
  lr-find  sweep the LR exponentially on your job: the loss curve (PNG) and a suggested LR; no run folder
  launch   `accelerate launch` whose SIGTERM/SIGINT checkpoints every process and exits 0 (for schedulers)

`accel-train train --help` lists every key. Launch on any device with
  accelerate launch --config_file launch_configs/<mode>.yaml -m accel_train train --config JOB.yaml
"""


def train(argv: list[str]) -> int:
    """Parse a job config, build the job, and fit it."""
    from accelerate.utils import set_seed

    from .config import parse_config
    from .fit import fit
    from .job import Job

    cfg, job = parse_config(argv, options=Job)
    set_seed(cfg.seed)  # the model's initial weights depend on the seed only
    parts = job.build(cfg.seed)
    fit(parts.model, parts.train_data, parts.eval_data, config=cfg, task=parts.task, collate_fn=parts.collate_fn,
        processor=parts.processor, options=job)
    return 0


# every other command is the `main(argv)` of its own module, imported only when it runs
MODULES = {"verify": "verify", "diagnose": "diagnosis", "plot": "plots", "report": "report", "compare": "compare",
           "lr-find": "lr_find", "launch": "launcher"}


def _module_main(module: str):
    def run(argv: list[str]) -> int:
        return importlib.import_module(f"{__package__}.{module}").main(argv)

    return run


COMMANDS = {"train": train, **{command: _module_main(module) for command, module in MODULES.items()}}


def entry() -> None:
    """The `accel-train` console script."""
    from .launch import leave

    leave(main())


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in COMMANDS and not argv[0].startswith("-"):
        report(UserError(f"unknown command `{argv[0]}`.{closest(argv[0], COMMANDS)} Commands: "
                         f"{', '.join(COMMANDS)} (accel-train --help shows how to use them)."))
        return EXIT_USER_ERROR
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(USAGE, file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        return 0 if argv and argv[0] in ("-h", "--help") else EXIT_USER_ERROR
    try:
        return COMMANDS[argv[0]](argv[1:])
    except UserError as error:
        report(error)
        return EXIT_USER_ERROR
