"""`accel-train verify`: proof, on the user's own job and launch config, that distributed training, resuming and
mixed precision do what they claim.

    accel-train verify --config JOB.yaml --launch-config launch_configs/cpu_ddp.yaml [--steps 8] [job flags ...]

It trains the job for a few optimizer steps, four times, each in fresh processes (in a temporary folder):

    single    1 process, per-device batch x N processes: the same global batch as the launch
    launched  N processes under `accelerate launch --config_file LAUNCH`
    stopped   the launched run, checkpointed and stopped after half the steps (mid-epoch) ...
    resumed   ... and resumed from that checkpoint in a new launch

and checks (a) launched == single within a tolerance, (b) resumed == launched bitwise, (c) the precision the launch
asks for is the one the model computes in. It prints a table and returns 1 when a check fails, naming the first
step where the runs part.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError

DEFAULT_LAUNCH = Path(__file__).resolve().parent.parent / "launch_configs" / "cpu_ddp.yaml"
DTYPES = {"no": "float32", "bf16": "bfloat16", "fp16": "float16"}


@dataclass
class Check:
    name: str
    passed: bool | None  # None: does not apply to this launch
    detail: str


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env() -> dict[str, str]:
    drop = ("ACCELERATE_", "MASTER_", "WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "OMP_NUM_THREADS")
    return {k: v for k, v in os.environ.items() if not k.startswith(drop)}


def _train(args: list[str], launch: Path | None) -> None:
    if launch is None:
        cmd = [sys.executable, "-m", "accel_train", "train", *args]
    else:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(launch),
               "--main_process_port", str(_free_port()), "-m", "accel_train", "train", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env())
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.splitlines() if "accel_train: error:" in line]
        raise UserError(f"verify: the training run failed ({' '.join(cmd[:8])} ...): "
                        f"{lines[0] if lines else proc.stderr.strip().splitlines()[-1:]}")


def _steps(run: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {r["step"]: r["train/loss"] for r in rows if r.get("kind") == "step"}


def _weights(run: Path):
    from safetensors.torch import load_file

    return load_file(run / "model.safetensors")


def compare_runs(reference: Path, other: Path, tolerance: float, after: int = 0) -> tuple[bool, str]:
    """(passed, detail): per-step losses after step `after` and final weights agree within `tolerance`
    (relative; 0 means bitwise). Names the first step whose loss parts."""
    ref_steps, other_steps = _steps(reference), _steps(other)
    steps = [s for s in sorted(ref_steps) if s > after]
    if [s for s in sorted(other_steps) if s > after] != steps:
        return False, f"the runs logged different steps ({sorted(other_steps)} vs {sorted(ref_steps)})"
    for step in steps:
        a, b = ref_steps[step], other_steps[step]
        if not (a == b if tolerance == 0 else math.isclose(a, b, rel_tol=tolerance, abs_tol=tolerance)):
            return False, f"the runs part at step {step}: loss {b!r} vs {a!r}"
    ref, got = _weights(reference), _weights(other)
    worst = 0.0
    for key, value in ref.items():
        diff = (got[key].double() - value.double()).abs().max().item() if value.numel() else 0.0
        scale = max(value.double().abs().max().item(), 1e-12) if value.numel() else 1.0
        worst = max(worst, diff / scale if tolerance else diff)
    if worst > tolerance:
        return False, f"losses agree over {len(steps)} steps but the final weights differ by {worst:.3g}"
    measure = "bitwise equal" if tolerance == 0 else f"max relative weight difference {worst:.2g} <= {tolerance:g}"
    return True, f"{measure}, {len(steps)} steps"


def _launch_settings(launch: Path) -> tuple[int, str]:
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(launch))
    precision = str(getattr(config.mixed_precision, "value", config.mixed_precision) or "no")
    return int(config.num_processes or 1), precision


def verify(job_config: str, launch_config: str | Path = DEFAULT_LAUNCH, steps: int = 8, tolerance: float | None = None,
           job_args: list[str] = (), workdir: str | None = None) -> list[Check]:
    """Run the four trainings and return the checks (see the module docstring)."""
    from .config import parse_config
    from .job import Job

    launch = Path(launch_config)
    if not launch.is_file():
        raise UserError(f"--launch-config {launch_config}: no such file (see launch_configs/).")
    cfg, _ = parse_config(["--config", job_config, *job_args], options=Job)
    processes, precision = _launch_settings(launch)
    precision = cfg.mixed_precision or precision
    tolerance = tolerance if tolerance is not None else (1e-5 if precision == "no" else 2e-2)
    half = max(1, steps // 2)
    base = ["--config", job_config, *job_args, "--max-steps", str(steps), "--log-every", "1",
            "--progress", "false", "--checkpoint-every", str(half), "--keep-checkpoints", "4",
            "--mixed-precision", precision]
    if workdir is None:  # the four runs are only evidence: gone afterwards unless --workdir keeps them
        with tempfile.TemporaryDirectory(prefix="accel-train-verify-") as tmp:
            return _verify_in(Path(tmp), base, launch, processes, cfg.batch_size, precision, tolerance, half)
    return _verify_in(Path(workdir), base, launch, processes, cfg.batch_size, precision, tolerance, half)


def _verify_in(root: Path, base: list[str], launch: Path, processes: int, batch_size: int, precision: str,
               tolerance: float, half: int) -> list[Check]:
    single, launched, resumed = root / "single", root / "launched", root / "resumed"
    _train(base + ["--output-dir", str(single), "--batch-size", str(batch_size * processes)], None)
    _train(base + ["--output-dir", str(launched)], launch)
    _train(base + ["--output-dir", str(resumed), "--stop-at-step", str(half)], launch)
    _train(base + ["--output-dir", str(resumed), "--resume", "auto"], launch)

    checks = []
    if processes > 1:
        ok, detail = compare_runs(single, launched, tolerance)
        layers = json.loads((launched / "plan.json").read_text())["batch_dependent_layers"]
        if not ok and layers:
            detail += (f" (the model has {', '.join(layers)}: per-process batch statistics and random masks differ "
                       "from one process by design; verify the same job without them to check the rest)")
        elif not ok:
            detail += (" (keep the runs with --workdir DIR and compare their metrics.jsonl; a model whose output "
                       "depends on the batch split or on randomness outside torch's RNG is the usual cause)")
        checks.append(Check(f"{processes} processes == 1 process", ok, detail))
    else:
        checks.append(Check("N processes == 1 process", None, "the launch config starts one process"))
    ok, detail = compare_runs(launched, resumed, 0.0, after=half)
    if not ok:
        detail += (" (state outside the checkpoint: a random or numpy generator of your own, or data that changes "
                   "between launches; keep the runs with --workdir DIR to compare them)")
    checks.append(Check(f"resumed at step {half} == uninterrupted", ok, detail))
    summary = json.loads((launched / "summary.json").read_text())
    seen, wanted = summary.get("compute_dtype"), DTYPES[precision]
    checks.append(Check(f"precision {'fp32' if precision == 'no' else precision}", seen == wanted if seen else None,
                        f"{summary['precision']}; the first linear/conv layer computed in {seen or '(none found)'}"
                        f"{'' if not seen or seen == wanted else f', expected {wanted}'}"))
    return checks


def render(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    mark = {True: "PASS", False: "FAIL", None: "n/a "}
    return "\n".join(f"  {mark[c.passed]}  {c.name:<{width}}  {c.detail}" for c in checks)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="accel-train verify", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="the job's YAML file")
    parser.add_argument("--launch-config", default=str(DEFAULT_LAUNCH), help="the accelerate launch config to check")
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps per run")
    parser.add_argument("--tolerance", type=float, default=None,
                        help="relative tolerance of check (a); default 1e-5 in fp32, 2e-2 in bf16/fp16")
    parser.add_argument("--workdir", default=None, help="keep the four run folders here")
    args, job_args = parser.parse_known_args(argv)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError("run `accel-train verify` directly, not under `accelerate launch`: it launches the runs "
                        "itself with --launch-config.")
    checks = verify(args.config, args.launch_config, args.steps, args.tolerance, job_args, args.workdir)
    print(f"accel-train verify: {args.config} on {args.launch_config}\n{render(checks)}")
    return 1 if any(c.passed is False for c in checks) else 0
