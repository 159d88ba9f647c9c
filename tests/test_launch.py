"""Launch configs: each loads with Accelerate's own loader; launches that would not do what they ask are refused
with one clear line, a non-zero exit, and no training."""

from __future__ import annotations

import pytest

from accel_train import TrainConfig, UserError
from accel_train.cli import COMMANDS
from support import CONFIGS, REPO, busy_core, check, launch, printed_errors, run_python

MODES = ("cpu", "cpu_ddp", "single_gpu", "multi_gpu", "fp16", "bf16", "multi_node", "fsdp", "deepspeed")
DIGITS = ["-m", "accel_train", "train", "--config", "examples/configs/digits.yaml", "--epochs", "1",
          "--progress", "false"]


def test_every_launch_config_loads_with_accelerate():
    from accelerate.commands.config.config_args import load_config_from_file

    assert sorted(p.stem for p in CONFIGS.glob("*.yaml")) == sorted(MODES)
    expected = {"cpu": ("NO", 1), "cpu_ddp": ("MULTI_GPU", 2), "multi_node": ("MULTI_GPU", 2),
                "fsdp": ("FSDP", 2), "deepspeed": ("DEEPSPEED", 2), "fp16": ("NO", 1)}
    for mode in MODES:
        config = load_config_from_file(str(CONFIGS / f"{mode}.yaml"))
        assert config.compute_environment.value == "LOCAL_MACHINE", mode
        if mode in expected:
            assert (config.distributed_type.value, config.num_processes) == expected[mode], mode
    assert load_config_from_file(str(CONFIGS / "fp16.yaml")).mixed_precision == "fp16"
    assert load_config_from_file(str(CONFIGS / "multi_node.yaml")).num_machines == 2


def _refused(proc, message: str) -> None:
    assert proc.returncode != 0
    assert "accel_train: error: " in proc.stderr and message in proc.stderr, proc.stderr[-3000:]
    assert len(printed_errors(proc.stderr)) == 1, "one message, from rank 0 only"
    assert "done:" not in proc.stdout


@pytest.mark.multiprocess
def test_fp16_on_cpu_is_refused(tmp_path):
    _refused(launch(DIGITS + ["--output-dir", str(tmp_path / "r")], config="fp16.yaml"),
             "fp16 mixed precision needs a GPU")
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())


@pytest.mark.multiprocess
def test_fsdp_on_cpu_is_refused_not_silently_ddp(tmp_path):
    _refused(launch(DIGITS + ["--output-dir", str(tmp_path / "r")], config="fsdp.yaml"), "FSDP needs GPUs")


@pytest.mark.multiprocess
def test_multi_cpu_config_that_starts_one_process_is_refused(tmp_path):
    """MULTI_CPU, num_processes 2, no hostfile: the launcher starts one process; we refuse to train alone."""
    config = tmp_path / "multi_cpu.yaml"
    config.write_text((CONFIGS / "cpu_ddp.yaml").read_text().replace("distributed_type: MULTI_GPU",
                                                                      "distributed_type: MULTI_CPU"))
    proc = launch(DIGITS + ["--output-dir", str(tmp_path / "r")], config=str(config))
    _refused(proc, "started only this one")
    assert "cpu_ddp.yaml" in proc.stderr


@pytest.mark.multiprocess
def test_user_error_under_the_launcher_is_one_line(tmp_path):
    proc = launch(DIGITS + ["--output-dir", str(tmp_path / "r"), "--lerning-rate", "0.1"])
    _refused(proc, "unknown config key `lerning_rate`")
    assert "Traceback" not in proc.stderr.split("accel_train: error:")[0]


def test_console_script_bad_key_exits_2_without_traceback(tmp_path):
    proc = run_python(["-m", "accel_train", "train", "--config", str(REPO / "examples/configs/digits.yaml"),
                       "--bach-size", "8"])
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("accel_train: error: unknown config key `bach_size`.")
    assert "Traceback" not in proc.stderr and "Did you mean `batch_size`?" in proc.stderr
    proc = run_python(["-m", "accel_train", "trian", "--config", "job.yaml"])
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"accel_train: error: unknown command `trian`. Did you mean `train`? Commands: {', '.join(COMMANDS)} "
        "(accel-train --help shows how to use them)."]
    proc = run_python(["-m", "accel_train", "train", "--help"])
    assert proc.returncode == 0 and "  --grad-accum " in proc.stdout and "--job.*" in proc.stdout


def test_thread_rules_in_order(monkeypatch):
    from accel_train.launch import choose_threads

    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert choose_threads(1) == (1, "--num-threads")
    assert choose_threads(None) == (2, "OMP_NUM_THREADS")
    monkeypatch.setenv("OMP_NUM_THREADS", "two")
    with pytest.raises(UserError, match="OMP_NUM_THREADS=two is not a thread count"):
        choose_threads(None)


@pytest.mark.parametrize("value", [0, -2])
def test_num_threads_below_one_is_a_clear_error(value):
    with pytest.raises(UserError, match=f"num_threads must be at least 1 \\(got {value}\\)"):
        TrainConfig(num_threads=value)


def test_a_core_kept_busy_by_another_process_is_left_to_it(monkeypatch):
    """A real busy process pinned to one core: the default takes only the cores that are free."""
    import os

    from accel_train.launch import choose_threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        pytest.skip("needs 2 cores")
    with busy_core():
        threads, rule = choose_threads(None)
    idle = int(rule.split(" of ")[0])  # other load on the machine may leave fewer cores idle, never more
    assert rule == f"{idle} of {len(cores)} cores idle, 1 process(es) here" and idle <= len(cores) - 1
    assert threads == max(1, idle)


def test_accelerate_launch_own_thread_default_gives_way_to_idle_cores(tmp_path):
    """`accelerate launch` sets OMP_NUM_THREADS to cores / processes when the user gave no count: with a core kept
    busy, that count is not taken; a count the user gives the launcher is."""
    import json

    with busy_core():
        check(launch([*DIGITS, "--max-steps", "2", "--output-dir", str(tmp_path / "auto")], config="cpu.yaml"))
    check(launch([*DIGITS, "--max-steps", "2", "--output-dir", str(tmp_path / "given")], config="cpu.yaml",
                 launch_args=("--num_cpu_threads_per_process", "2")))
    auto = json.loads((tmp_path / "auto" / "plan.json").read_text())
    given = json.loads((tmp_path / "given" / "plan.json").read_text())
    assert auto["threads_rule"].endswith("cores idle, 1 process(es) here") and auto["threads_per_process"] == 1
    assert (given["threads_rule"], given["threads_per_process"]) == ("OMP_NUM_THREADS", 2)


def test_under_accel_train_launch_our_line_is_the_last_one(tmp_path):
    """`accelerate launch` ends a failed run with its own CalledProcessError traceback, which it always prints;
    `accel-train launch` leaves that report out, prints our one line again last and exits 2."""
    proc = run_python(["-m", "accel_train", "launch", "--config_file", str(CONFIGS / "cpu.yaml"), "-m", "accel_train",
                       "train", "--config", str(REPO / "examples/configs/digits.yaml"), "--bach-size", "3"])
    assert proc.returncode == 2 and "CalledProcessError" not in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == ("accel_train: error: unknown config key `bach_size`. Did you mean "
                                                   "`batch_size`? Run with --help to list the valid keys.")


LEAVE = """
import atexit, sys, threading, time
from pathlib import Path
from accel_train.launch import leave

out = Path(sys.argv[1])


class Teardown:  # freed only by Python's teardown, which leave skips
    def __del__(self, out=out):
        (out / "teardown").write_text("ran")


kept = Teardown()
atexit.register(lambda: (out / "atexit").write_text("ran"))
threading.Thread(target=lambda: (time.sleep(0.3), (out / "thread").write_text("done"))).start()
print("buffered", end="")  # no newline: flushed by leave, not by the line buffer
leave(int(sys.argv[2]))
"""


@pytest.mark.parametrize("code", [0, 3])
def test_leave_does_what_exit_does_first_then_skips_the_teardown(tmp_path, code):
    """leave: the other threads finish, atexit handlers run, output is flushed, the exit code holds; the teardown
    (the 1-2 s that frees every module and object) does not run."""
    proc = run_python(["-c", LEAVE, str(tmp_path), str(code)])
    assert (proc.returncode, proc.stdout, proc.stderr) == (code, "buffered", "")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["atexit", "thread"]
