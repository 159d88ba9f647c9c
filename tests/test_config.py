"""The typed config: YAML + flags through jsonargparse, with clear rejections."""

from __future__ import annotations

import pytest
import yaml

from accel_train import TrainConfig, UserError, parse_config
from accel_train.job import Job
from accel_train.tasks.vision import Digits
from support import REPO

DIGITS = str(REPO / "examples" / "configs" / "digits.yaml")


def test_yaml_then_flags_override():
    cfg, job = parse_config(["--config", DIGITS, "--epochs", "3", "--batch-size", "8", "--job.channels", "16",
                             "--milestones", "[10, 20]", "--mixed_precision=bf16"], options=Job)
    assert isinstance(cfg, TrainConfig) and isinstance(job, Digits)
    assert (cfg.epochs, cfg.batch_size, cfg.lr, cfg.milestones, cfg.mixed_precision) == (3, 8, 0.003, [10, 20], "bf16")
    assert job.channels == 16 and job.val_fraction == 0.2
    assert job.record() == {"class_path": "accel_train.tasks.vision.Digits",
                            "init_args": {"val_fraction": 0.2, "channels": 16, "batch_norm": True,
                                          "dropout": 0.2}}


def test_unknown_flag_names_closest_key():
    with pytest.raises(UserError, match=r"unknown config key `bach_size`.*Did you mean `batch_size`"):
        parse_config(["--bach-size", "8"])


def test_unknown_yaml_key_names_closest_key(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump({"epochs": 2, "warmup_step": 10}))
    with pytest.raises(UserError, match=r"`warmup_step`.*Did you mean `warmup_steps`"):
        parse_config(["--config", str(path)])


def test_unknown_job_option_names_closest_option():
    with pytest.raises(UserError, match=r"`chanels`.*Did you mean `channels`"):
        parse_config(["--config", DIGITS, "--job.chanels", "8"], options=Job)


def test_wrong_type_is_named():
    with pytest.raises(UserError, match=r"^--epochs must be an integer \(got three\)\.$"):
        parse_config(["--epochs", "three"])
    with pytest.raises(UserError, match=r"^--scheduler must be one of constant, step, .* \(got cosin\)\.$"):
        parse_config(["--scheduler", "cosin"])


@pytest.mark.parametrize("flag,value", [("--batch-size", "0"), ("--grad-accum", "0"), ("--epochs", "0"),
                                        ("--lr", "0")])
def test_out_of_range_values(flag, value):
    with pytest.raises(UserError, match=flag.lstrip("-").replace("-", "_")):
        parse_config([flag, value])


def test_missing_config_file():
    with pytest.raises(UserError, match="nope.yaml"):
        parse_config(["--config", "nope.yaml"])


def test_script_options_are_flat_flags():
    from dataclasses import dataclass

    @dataclass
    class Opts:
        model: str = "m"
        train_file: str | None = None

    cfg, opts = parse_config(["--train-file", "a.csv", "--lr", "0.1"], options=Opts)
    assert opts.train_file == "a.csv" and opts.model == "m" and cfg.lr == 0.1


def test_every_example_config_parses():
    for path in (REPO / "examples" / "configs").glob("*.yaml"):
        written = yaml.safe_load(path.read_text())
        cfg, job = parse_config(["--config", str(path)], options=Job)
        assert job.record()["class_path"] == written["job"]["class_path"], path
        for key, value in written["job"].get("init_args", {}).items():
            assert getattr(job, key) == value, (path, key)
        for key, value in written.items():
            if key != "job":
                assert getattr(cfg, key) == (tuple(value) if key == "betas" else value), (path, key)


def test_old_job_paths_still_work_with_a_warning():
    with pytest.warns(FutureWarning, match="accel_train.jobs.Digits is deprecated.*accel_train.tasks.vision.Digits"):
        cfg, job = parse_config(["--config", str(REPO / "examples/configs/digits.yaml"), "--job",
                                 "accel_train.jobs.Digits", "--job.channels", "8"], options=Job)
    assert type(job) is Digits and job.channels == 8


def test_an_example_takes_its_job_and_the_same_flags():
    cfg, job = parse_config(["--job.channels", "8", "--epochs", "2"],
                            defaults=str(REPO / "examples/configs/digits.yaml"), options=Digits)
    assert job == Digits(val_fraction=0.2, channels=8) and cfg.epochs == 2 and cfg.lr == 0.003
    cfg, job = parse_config([], options=Digits)  # no job file: the class's own defaults
    assert job == Digits() and cfg == TrainConfig()


MISTAKES = [  # every config mistake and the one line it gets (the job file is examples/configs/digits.yaml)
    (["--mixed-precision", "fp8"], "--mixed-precision must be one of no, fp16, bf16 (got fp8)."),
    (["--max-steps", "x"], "--max-steps must be an integer or null (got x)."),
    (["--max-grad-norm", "big"], "--max-grad-norm must be a number or null (got big)."),
    (["--pin-memory", "maybe"], "--pin-memory must be true, false or null (got maybe)."),
    (["--betas", "0.9"], "--betas must be a list of 2 numbers, e.g. [0.9, 0.999] (got 0.9)."),
    (["--milestones", "a"], "--milestones must be a list of integers, e.g. [10, 20] (got a)."),
    (["--job.channels", "abc"], "--job.channels must be an integer (got abc)."),  # a bad value, not an unknown key
    (["--job.chanels", "8"],
     "unknown config key `chanels`. Did you mean `channels`? Run with --help to list the valid keys."),
    (["--job.foo", "8"],
     "unknown config key `foo`. Valid keys: val_fraction, channels, batch_norm, dropout. Run with --help to list "
     "the valid keys."),
    (["--learning-rate", "0.1"],  # another trainer's name
     "unknown config key `learning_rate`. Did you mean `lr`? Run with --help to list the valid keys."),
    (["--gradient-accumulation-steps", "2"],
     "unknown config key `gradient_accumulation_steps`. Did you mean `grad_accum`? Run with --help to list the "
     "valid keys."),
]


@pytest.mark.parametrize(("argv", "line"), [
    *[([f"--config={DIGITS}", *argv], line) for argv, line in MISTAKES],
    (["--compile-mode", "fast"],
     "--compile-mode must be one of default, reduce-overhead, max-autotune, max-autotune-no-cudagraphs (got fast)."),
    (["--optimizer-impl", "turbo"], "--optimizer-impl must be one of auto, fused, foreach, for_loop (got turbo)."),
])
def test_a_value_outside_a_fixed_set_names_the_choices(argv, line):
    with pytest.raises(UserError) as error:
        parse_config(argv, options=Job)
    assert str(error.value) == line
