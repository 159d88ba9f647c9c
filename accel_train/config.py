"""The run's configuration: one typed dataclass, read from YAML and overridden on the command line.

`TrainConfig` is what the loop needs to know. jsonargparse turns it into flags (`--lr 3e-4`, `--batch-size 32`),
reads `--config job.yaml`, checks every value's type and rejects unknown keys; this module only adds the closest
valid key to that rejection and accepts `--dash-case` as well as `--snake_case` flags.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import UserError
from .quiet import quiet_libraries

Optimizer = Literal["sgd", "adam", "adamw"]
Schedule = Literal[
    "constant", "step", "multistep", "exponential", "cosine", "plateau", "linear_warmup", "cosine_warmup",
    "cosine_restarts", "wsd"
]
Precision = Literal["no", "fp16", "bf16"]


@dataclass
class TrainConfig:
    """Everything the loop needs; every field is also a command-line flag (`--batch-size 32`)."""

    # -- run ---------------------------------------------------------------------------------------------------
    name: str = "run"  # names the default run folder runs/<name>-<timestamp>
    output_dir: str | None = None  # run folder; must be new (or pass --resume to continue the run in it)
    resume: str | None = None  # checkpoint folder to continue from, or `auto` for the newest in output_dir
    seed: int = 0  # seeds Python, NumPy, torch and the data order

    # -- length ------------------------------------------------------------------------------------------------
    epochs: int = 10  # passes over the training data
    max_steps: int | None = None  # stop after this many optimizer steps (overrides epochs when set)

    # -- batches -----------------------------------------------------------------------------------------------
    batch_size: int = 64  # per device; effective batch = batch_size x processes x grad_accum
    eval_batch_size: int | None = None  # per device for validation; default batch_size
    grad_accum: int = 1  # micro-batches per optimizer step
    num_workers: int = 0  # DataLoader worker processes per training process

    # -- optimizer ---------------------------------------------------------------------------------------------
    optimizer: Optimizer = "adamw"
    lr: float = 1e-3  # peak learning rate
    weight_decay: float = 0.0  # decoupled for adamw; never applied to biases and norm weights
    momentum: float = 0.9  # sgd only
    nesterov: bool = False  # sgd only
    betas: tuple[float, float] = (0.9, 0.999)  # adam, adamw

    # -- learning-rate schedule, counted in optimizer steps ---------------------------------------------------------
    scheduler: Schedule = "constant"
    warmup_steps: int = 0  # linear warm-up from 0 (linear_warmup, cosine_warmup, wsd)
    step_size: int = 100  # step: multiply by gamma every step_size steps
    milestones: list[int] = field(default_factory=list)  # multistep: multiply by gamma at these steps
    gamma: float = 0.1  # step, multistep, exponential (per step), plateau (factor)
    min_lr: float = 0.0  # floor of cosine, cosine_warmup and plateau
    plateau_patience: int = 2  # plateau: epochs without improvement of `monitor` before the LR drops
    restart_every: int | None = None  # cosine_restarts: optimizer steps of the first cosine cycle (required)
    restart_mult: int = 1  # cosine_restarts: each cycle this many times as long as the one before
    decay_steps: int | None = None  # wsd: the final steps, decaying linearly to min_lr; default a tenth of the run

    # -- recipes (accel_train.recipes, accel_train.ema): all off by default ------------------------------------------
    ema_decay: float | None = None  # keep an exponential moving average of the weights with this decay (0.999)
    ema_warmup: bool = False  # EMA decay min(ema_decay, (1 + n) / (10 + n)) at update n: early weights fade fast
    eval_ema: bool = False  # validate, pick the best and export with the EMA weights
    label_smoothing: float = 0.0  # cross_entropy: share of each target spread evenly over all classes
    class_weights: str | list[float] | None = None  # cross_entropy: `auto` (inverse label frequency) or w0,w1,...
    mixup_alpha: float = 0.0  # images: MixUp of training batches, mixing weight ~ Beta(alpha, alpha); 0: off
    cutmix_alpha: float = 0.0  # images: CutMix of training batches, box share ~ Beta(alpha, alpha); 0: off
    mix_prob: float = 1.0  # share of training batches mixed (with mixup and cutmix both on, one of them at random)
    layer_lr_decay: float | None = None  # transformers: each lower layer's LR times this (embeddings lowest)

    # -- gradient clipping (applied once per optimizer step) -------------------------------------------------------
    max_grad_norm: float | None = None  # clip the global gradient norm to this
    clip_value: float | None = None  # clip each gradient element to [-v, v]

    # -- devices and precision ---------------------------------------------------------------------------------
    mixed_precision: Precision | None = None  # no / fp16 / bf16; default: what the launch config says
    cpu: bool = False  # train on the CPU even when a GPU is present
    num_threads: int | None = None  # torch threads per process; default: OMP_NUM_THREADS, else a share of idle cores
    find_unused_parameters: bool = False  # DDP: allow parameters that receive no gradient in a step

    # -- speed (accel_train.speed) ----------------------------------------------------------------------------------
    optimizer_impl: Literal["auto", "fused", "foreach", "for_loop"] = "auto"  # torch kernels; auto: fused where torch has them
    channels_last: bool = False  # CNNs: NHWC weights and activations (faster convolutions on GPUs)
    tf32: bool = False  # TF32 float32 matmuls and convolutions (Ampere or newer NVIDIA GPUs)
    gradient_checkpointing: bool = False  # Hugging Face models: recompute activations in backward, less memory
    compile: Literal["off", "full", "regional"] = "off"  # torch.compile the model; regional: each repeated block
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = "default"
    compile_backend: Literal["inductor", "aot_eager", "eager", "cudagraphs"] = "inductor"  # eager: capture only
    pin_memory: bool | None = None  # page-locked batches copied without blocking; default: on with a GPU
    auto_batch_size: bool = False  # on out-of-memory, a smaller per-device batch and more accumulation (same effect)

    # -- checkpoints and recovery ---------------------------------------------------------------------------------
    checkpoint_every: int | None = None  # also checkpoint every N optimizer steps (mid-epoch); always each epoch
    keep_checkpoints: int = 1  # newest complete checkpoints kept; the best one is kept as well; 0: only the best
    save_optimizer: bool = True  # false: a finished run's checkpoints drop the optimizer state (smaller, not resumable)
    background_checkpoints: bool = True  # write checkpoint files in a thread while training goes on
    stop_at_step: int | None = None  # checkpoint and exit 0 after this optimizer step, as on SIGTERM; resume later
    early_stopping: int | None = None  # stop after this many epochs without `monitor` improving by min_delta
    min_delta: float = 0.0  # improvement of `monitor` that resets early stopping
    restore_best: bool = False  # end with the best checkpoint's weights: model.safetensors is then the best
    nonfinite: Literal["skip", "stop", "off"] = "skip"  # NaN/inf loss or gradient norm: skip that step, or stop
    peer_timeout: float = 60.0  # several processes: a peer silent this many seconds ends the run with one line; 0: off

    # -- validation, best checkpoint and logging ---------------------------------------------------------------------
    monitor: str | None = None  # validation metric picking the best checkpoint; default: the first metric, else loss
    monitor_mode: Literal["max", "min"] | None = None  # default: min for losses and errors, max otherwise
    log_every: int = 10  # optimizer steps between logged training lines
    log_with: list[str] | str = field(default_factory=list)  # trackers: tensorboard, wandb, mlflow (a,b for several)
    progress: bool = True  # progress bar on the main process
    count_flops: bool | None = None  # one step's FLOPs counted once, for FLOPs/s and MFU; default: on a GPU only
    verbose: bool = False  # also show third-party progress bars, load reports and warnings (transformers, datasets)

    def __post_init__(self) -> None:
        from .tracking import parse_names

        self.log_with = parse_names(self.log_with)
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "grad_accum": self.grad_accum,
                    "log_every": self.log_every}
        for key in ("checkpoint_every", "stop_at_step", "early_stopping", "num_threads"):
            if getattr(self, key) is not None:
                positive[key] = getattr(self, key)
        if self.eval_batch_size is not None:
            positive["eval_batch_size"] = self.eval_batch_size
        if self.max_steps is not None:
            positive["max_steps"] = self.max_steps
        for key, value in positive.items():
            if value < 1:
                raise UserError(f"{key} must be at least 1 (got {value}). Set --{key.replace('_', '-')} to 1 or more.")
        if not self.lr > 0:
            raise UserError(f"lr must be positive (got {self.lr}). Set --lr, for example --lr 1e-3.")
        if self.keep_checkpoints < 0:
            raise UserError(f"keep_checkpoints must be 0 or more (got {self.keep_checkpoints}); 0 keeps only the best.")
        if self.num_workers < 0 or self.warmup_steps < 0:
            raise UserError("num_workers and warmup_steps cannot be negative.")
        if self.mixed_precision is not None and self.mixed_precision not in ("no", "fp16", "bf16"):
            raise UserError(f"mixed_precision must be no, fp16 or bf16 (got {self.mixed_precision!r}).")
        self._check_recipes()

    def _check_recipes(self) -> None:
        """The recipes' ranges; whether a recipe applies to the model and task is checked in accel_train.recipes."""
        ranges = {"ema_decay": (0.0, 1.0), "layer_lr_decay": (0.0, 1.0), "label_smoothing": (0.0, 1.0),
                  "mix_prob": (0.0, 1.0)}
        for key, (low, high) in ranges.items():
            value = getattr(self, key)
            if value is not None and not low <= value <= high:
                raise UserError(f"{key} must lie in [{low}, {high}] (got {value}). Set --{key.replace('_', '-')}.")
        if self.mixup_alpha < 0 or self.cutmix_alpha < 0:
            raise UserError("mixup_alpha and cutmix_alpha cannot be negative (0 turns them off).")
        for key in ("restart_every", "decay_steps", "restart_mult"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise UserError(f"{key} must be at least 1 (got {getattr(self, key)}).")
        if self.scheduler == "cosine_restarts" and self.restart_every is None:
            raise UserError("--scheduler cosine_restarts needs --restart-every N: the optimizer steps of its first "
                            "cycle (--restart-mult M makes each cycle M times longer).")
        if self.scheduler == "cosine_restarts" and self.warmup_steps:
            raise UserError("--scheduler cosine_restarts has no warm-up: drop --warmup-steps, or use wsd or "
                            "cosine_warmup.")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


CONFIG_KEYS = tuple(f.name for f in dataclasses.fields(TrainConfig))

_FLAG = re.compile(r"^--([A-Za-z][\w.-]*)(=.*)?$", re.S)


def _snake_flags(argv: list[str]) -> list[str]:
    """`--batch-size 8` -> `--batch_size 8` (values are left alone)."""
    out = []
    for arg in argv:
        m = _FLAG.match(arg)
        out.append(f"--{m.group(1).replace('-', '_')}{m.group(2) or ''}" if m else arg)
    return out


def _valid_keys(message: str, extra_keys: list[str]) -> list[str]:
    """The keys the rejected section accepts: TrainConfig's, or a job class's constructor arguments."""
    found = re.search(r"class_path '([\w.]+)'", message)
    if found:
        import importlib
        import inspect

        module, _, name = found.group(1).rpartition(".")
        try:
            return list(inspect.signature(getattr(importlib.import_module(module), name)).parameters)
        except (ImportError, AttributeError, ValueError):
            return []
    return list(CONFIG_KEYS) + extra_keys


def _explain(message: str, extra_keys: list[str], types: dict[str, Any] | None = None) -> str:
    """Turn jsonargparse's rejection into one line: an unknown key with the closest valid one, or a bad value
    with what the key takes (`types`: the top-level keys' types)."""
    from .config_words import job_value_error, suggest, value_error

    if (job_line := job_value_error(message)) is not None:
        return job_line
    patterns = (r"does not accept (?:nested )?(?:key|option)s? ['\"]?([\w.]+)", r"[Uu]nrecognized arguments:\s*--([\w.]+)",
                r"Option '([\w.]+)' is not accepted", r"NestedArg\(key='([\w.]+)'")
    for pattern in patterns:
        found = re.search(pattern, message)
        if found:
            key, job = found.group(1).split(".")[-1], "class_path '" in message
            return (f"unknown config key `{found.group(1)}`.{suggest(key, _valid_keys(message, extra_keys), not job)} "
                    "Run with --help to list the valid keys.")
    typed = re.search(r'key "([\w.]+)":\s*(.*)', message, re.S)
    if typed:
        choices = re.search(r"Expected a typing\.Literal\[(.*?)\]", typed.group(2))
        value = re.search(r"(?:Got|Given) value: (\S+)\s*$", typed.group(2))
        if choices and value:  # one of a fixed set (or none): name the flag and the choices, not Python types
            flag = "--" + typed.group(1).replace("_", "-")
            options = ", ".join(option.strip(" '\"") for option in choices.group(1).split(","))
            return f"{flag} must be one of {options} (got {value.group(1)})."
        plain = value_error(typed.group(1), (types or {}).get(typed.group(1)), value.group(1)) if value else None
        return plain or f"bad value for `{typed.group(1)}`: {' '.join(typed.group(2).split())}"
    return " ".join(message.split())


def _is_job(options: type | None) -> bool:
    from .job import Job

    return isinstance(options, type) and issubclass(options, Job)


def build_parser(options: type | None = None):
    """A jsonargparse parser: TrainConfig as top-level flags, plus a script's `options`.

    `options` is a `Job` class (the `job:` section of a job file, naming that class or a subclass by `class_path`;
    its fields are the `--job.*` flags, and a concrete job is the default) or a plain dataclass (its fields become
    more top-level flags).
    """
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(exit_on_error=False, allow_abbrev=False)
    parser.add_argument("--config", action=ActionConfigFile, help="YAML file with any of the keys below.")
    parser.add_class_arguments(TrainConfig, nested_key=None, fail_untyped=True)
    if _is_job(options):
        from .job import Job

        parser.add_subclass_arguments(options, "job", required=True)
        if options is not Job:
            parser.set_defaults({"job": {"class_path": f"{options.__module__}.{options.__qualname__}"}})
    elif options is not None:
        parser.add_class_arguments(options, nested_key=None, fail_untyped=True)
    return parser


def parse_config(argv: list[str] | None = None, *, defaults: str | None = None, options: type | None = None):
    """Parse `--config FILE` and flags into a TrainConfig (and the script's own options).

    Args:
        argv: command-line words; default `sys.argv[1:]`. `--batch-size 8` and `--batch_size 8` both work.
        defaults: a YAML file read before argv (an example's own job file); argv overrides it.
        options: a `Job` class, parsed as the `job:` section (an example script and the command line share the job
            file and its `--job.*` flags), or a dataclass of a script's own top-level flags.

    Returns:
        The TrainConfig, or `(TrainConfig, options)` when `options` is given.

    Raises:
        UserError: an unknown key (naming the closest valid one), a value of the wrong type, a missing file.
    """
    argv = _snake_flags(list(sys.argv[1:] if argv is None else argv))
    if defaults is not None:
        argv = ["--config", defaults, *argv]
    if "-h" in argv or "--help" in argv:
        from .flags import job_for_help, render_help

        print(render_help(TrainConfig, *job_for_help(argv, options)))
        raise SystemExit(0)
    parser = build_parser(options)
    try:
        built = parser.instantiate(parser.parse_args(argv))
    except (Exception, SystemExit) as error:  # jsonargparse raises argparse.ArgumentError; --help raises SystemExit(0)
        if isinstance(error, SystemExit) and not error.code:
            raise
        cause = error if isinstance(error, UserError) else error.__cause__ or error.__context__
        if isinstance(cause, UserError):
            raise cause from None
        extra = [] if options is None else ["job"] if _is_job(options) else [
            f.name for f in dataclasses.fields(options)]
        from .config_words import hints

        types = {**hints(TrainConfig), **(hints(options) if options is not None and not _is_job(options) else {})}
        raise UserError(_explain(str(error), extra, types)) from None
    cfg = TrainConfig(**{key: built[key] for key in CONFIG_KEYS})
    quiet_libraries(cfg.verbose)  # before the job or script loads a model or a dataset
    if options is None:
        return cfg
    if _is_job(options):
        return cfg, built["job"]
    return cfg, options(**{f.name: built[f.name] for f in dataclasses.fields(options)})


if __name__ == "__main__":  # python -m accel_train.config > examples/configs/README.md
    from .flags import reference

    print(reference(TrainConfig), end="")
