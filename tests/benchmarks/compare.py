"""accel_train against what users would pick instead, on the same jobs: a plain PyTorch loop, a plain Accelerate
loop, the Hugging Face Trainer and Lightning's Trainer. Same model, data, seed, batch, epochs, optimizer,
schedule, clipping, fp32, threads (OMP_NUM_THREADS); each tool in its own process, the runs interleaved
(round by round, the tools' order rotated each round), medians of the rounds.

    python tests/benchmarks/compare.py --jobs digits,small_steps,minilm,clip \\
        --tools accel_train,plain,accelerate,hf_trainer,lightning --runs 3 --out bench-results

Writes DIR/results.json (every run, and the medians) and DIR/results.md (the table), and prints the table: per
job and tool the whole-process wall time, the training time (each epoch from its start to its last optimizer
step, validation and epoch-end checkpoints left out, as accel_train's summary counts it), training samples/s, the
peak resident memory of the process, the final validation accuracy, and the ratios of training and wall time to
the plain loop (median over rounds of the round's ratio); then accel_train's ratios to each other tool, paired by
round the same way, which decide whether it is ahead of a peer. accel_train runs its command line with its
defaults (checkpoint every epoch, progress bar, non-finite guard); the jobs are in bench_jobs.py.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench_jobs import ACCURACY, JOBS, REPO, job_args

HERE = Path(__file__).resolve().parent
TOOLS = {"accel_train": None, "plain": ("peer_loop", []), "accelerate": ("peer_loop", ["--accelerate"]),
         "hf_trainer": ("peer_hf_trainer", []), "lightning": ("peer_lightning", [])}  # script, its flags
TARGETS = {"train": 1.05, "wall": 1.10}  # accel_train against the plain loop


def command(tool: str, job: str, out: Path, smoke: bool) -> list[str]:
    if TOOLS[tool] is None:
        return [sys.executable, "-m", "accel_train", "train", *job_args(job, smoke), "--output-dir", str(out)]
    script, flags = TOOLS[tool]
    return [sys.executable, str(HERE / f"{script}.py"), *flags, "--job", job, "--out", str(out),
            *(["--smoke"] if smoke else [])]


def environment(threads: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "OMP_", "PYTEST_"))}
    return {**env, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}


def read_result(tool: str, folder: Path) -> dict:
    """What the run reports: accel_train's summary.json, or a peer's last stdout line."""
    if TOOLS[tool] is not None:
        return json.loads((folder / "stdout.log").read_text().strip().splitlines()[-1])
    summary = json.loads((folder / "run" / "summary.json").read_text())
    return {"train_time_s": summary["train_time_s"], "samples": summary["samples"], "steps": summary["steps"],
            "final_val": summary["final_val"], "final_loss": summary["final_train"].get("loss")}


def run_process(tool: str, job: str, folder: Path, smoke: bool, threads: int) -> dict:
    """One run in its own process (its files in `folder`/run, its output in `folder`); its wall time and peak
    RSS (from wait4) with what it reports."""
    folder.mkdir(parents=True)
    with open(folder / "stdout.log", "w") as stdout, open(folder / "stderr.log", "w") as stderr:
        tick = time.perf_counter()
        proc = subprocess.Popen(command(tool, job, folder / "run", smoke), stdout=stdout, stderr=stderr, cwd=REPO,
                                env=environment(threads))
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - tick
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = (folder / "stderr.log").read_text()[-3000:]
        raise SystemExit(f"{tool} on {job} failed (exit {proc.returncode}); its stderr ends:\n{tail}")
    return {**read_result(tool, folder), "wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024}


def run_in_process(tool: str, job: str, folder: Path, smoke: bool, threads: int) -> dict:
    """One run in this process (the test suite's smoke run: no interpreter start-up per run); no RSS figure."""
    import importlib

    import torch

    from accel_train.internals import reset_accelerate_state

    folder.mkdir(parents=True)
    before, out = torch.get_num_threads(), folder / "run"
    os.environ["OMP_NUM_THREADS"] = str(threads)
    tick = time.perf_counter()
    try:
        reset_accelerate_state()
        if TOOLS[tool] is None:
            from accel_train.cli import main as cli

            assert cli(command(tool, job, out, smoke)[3:]) == 0
        else:
            report = importlib.import_module(TOOLS[tool][0]).main(command(tool, job, out, smoke)[2:])
            (folder / "stdout.log").write_text(json.dumps(report) + "\n")
    finally:
        torch.set_num_threads(before)
        reset_accelerate_state()
    return {**read_result(tool, folder), "wall_s": time.perf_counter() - tick, "peak_rss_mb": None}


def row_of(tool: str, job: str, round_: int, report: dict) -> dict:
    accuracy = report.pop("final_val", {}).get(ACCURACY[job]) if "final_val" in report else report["accuracy"]
    train = report["train_time_s"]
    return {"job": job, "tool": tool, "round": round_, "wall_s": report["wall_s"], "train_time_s": train,
            "samples": report["samples"], "steps": report["steps"], "samples_per_s": report["samples"] / train,
            "peak_rss_mb": report["peak_rss_mb"], "accuracy": accuracy, "accuracy_name": ACCURACY[job],
            "final_loss": report["final_loss"]}


def tidy(folder: Path) -> None:
    """Drop a run's checkpoints and weights once it is read (MiniLM's are 90 MB a run); keep its logs."""
    if (folder / "run" / "summary.json").exists():
        shutil.move(folder / "run" / "summary.json", folder / "summary.json")
    shutil.rmtree(folder / "run", ignore_errors=True)


def run_all(args, save) -> list[dict]:
    """Every round; `save(rows)` after each one, so that an interrupted benchmark leaves its finished rounds."""
    runner = run_in_process if args.in_process else run_process
    rows, runs = [], Path(args.out) / "runs"
    if runs.exists():
        shutil.rmtree(runs)
    rounds = [("warm-up", True)] if args.warmup and not args.smoke else []
    rounds += [(r, args.smoke) for r in range(args.runs)]
    for round_, smoke in rounds:
        shift = 0 if round_ == "warm-up" else round_
        order = args.tools[shift % len(args.tools):] + args.tools[:shift % len(args.tools)]
        for job in args.jobs:
            for tool in order:
                folder = runs / f"{job}-{tool}-{round_}"
                report = runner(tool, job, folder, smoke, args.threads)
                tidy(folder)
                if round_ != "warm-up":
                    rows.append(row_of(tool, job, round_, report))
                    line = rows[-1]
                    print(f"  round {round_} {job:<11} {tool:<11} wall {line['wall_s']:7.2f} s  train "
                          f"{line['train_time_s']:7.2f} s  accuracy {line['accuracy']:.4f}", flush=True)
        if round_ != "warm-up":
            save(rows)
    return rows


def summarize(rows: list[dict], jobs: list[str], tools: list[str]) -> list[dict]:
    """Medians per (job, tool) and the median over rounds of each round's ratio to the plain loop."""
    summary = []
    for job in jobs:
        plain = {r["round"]: r for r in rows if r["job"] == job and r["tool"] == "plain"}
        for tool in tools:
            mine = [r for r in rows if r["job"] == job and r["tool"] == tool]
            entry = {"job": job, "tool": tool, "runs": len(mine)}
            for key in ("wall_s", "train_time_s", "samples_per_s", "peak_rss_mb", "accuracy", "final_loss"):
                values = [r[key] for r in mine if r[key] is not None]
                entry[key] = statistics.median(values) if values else None
            for key, name in (("train_time_s", "train_ratio"), ("wall_s", "wall_ratio")):
                ratios = [r[key] / plain[r["round"]][key] for r in mine if r["round"] in plain]
                entry[name] = statistics.median(ratios) if ratios else None
            summary.append(entry)
    return summary


def paired(rows: list[dict], jobs: list[str], tools: list[str]) -> dict[str, dict[str, dict[str, float]]]:
    """accel_train against each other tool, per job: the median over rounds of the round's ratio of training and
    of wall time. A round runs every tool back to back, so its ratio cancels the machine's drift between rounds,
    which the medians of each tool's own times keep: on a shared 2-core VM one tool's rounds moved by up to 30 %."""
    out: dict = {}
    for job in jobs:
        runs = {(r["tool"], r["round"]): r for r in rows if r["job"] == job}
        for tool in tools:
            rounds = [k for (t, k) in runs if t == tool and ("accel_train", k) in runs]
            if tool != "accel_train" and rounds:
                out.setdefault(job, {})[tool] = {
                    name: statistics.median(runs["accel_train", k][key] / runs[tool, k][key] for k in rounds)
                    for name, key in (("train", "train_time_s"), ("wall", "wall_s"))}
    return out


def _cell(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(summary: list[dict]) -> str:
    lines = ["| job | tool | wall (s) | training (s) | samples/s | peak RSS (MB) | accuracy | training / plain "
             "| wall / plain |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for e in summary:
        lines.append(f"| {e['job']} | {e['tool']} | {_cell(e['wall_s'], '.2f')} | {_cell(e['train_time_s'], '.2f')} "
                     f"| {_cell(e['samples_per_s'], '.0f')} | {_cell(e['peak_rss_mb'], '.0f')} "
                     f"| {_cell(e['accuracy'], '.4f')} | {_cell(e['train_ratio'], '.3f')} "
                     f"| {_cell(e['wall_ratio'], '.3f')} |")
    return "\n".join(lines)


def paired_table(pairs: dict) -> str:
    lines = ["| job | accel_train / tool, paired by round | training | wall |", "|---|---|---:|---:|"]
    for job, tools in pairs.items():
        lines += [f"| {job} | {tool} | {r['train']:.3f} | {r['wall']:.3f} |" for tool, r in tools.items()]
    return "\n".join(lines)


def verdicts(summary: list[dict], pairs: dict) -> list[str]:
    """accel_train against the targets: training <= 1.05x and wall <= 1.10x the plain loop, ahead of every peer in
    training time (the paired ratio below 1)."""
    lines = []
    for job in dict.fromkeys(e["job"] for e in summary):
        mine = next((e for e in summary if e["job"] == job and e["tool"] == "accel_train"), None)
        if mine is None or mine["train_ratio"] is None:
            continue
        misses = [f"{k} {mine[k + '_ratio']:.3f} > {bound}" for k, bound in TARGETS.items()
                  if mine[k + "_ratio"] > bound]
        misses += [f"behind {tool} in training time ({r['train']:.3f})" for tool, r in pairs.get(job, {}).items()
                   if tool != "plain" and r["train"] > 1.0]
        lines.append(f"{job}: accel_train {'meets the targets' if not misses else 'misses: ' + '; '.join(misses)}")
    return lines


def machine() -> dict:
    import torch

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cores": len(os.sched_getaffinity(0)), "load_average": os.getloadavg(), "python": platform.python_version(),
            "torch": torch.__version__, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def parse_args(argv: list[str] | None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", default=",".join(JOBS), help=f"comma-separated, of {', '.join(JOBS)}")
    parser.add_argument("--tools", default=",".join(TOOLS), help=f"comma-separated, of {', '.join(TOOLS)}")
    parser.add_argument("--runs", type=int, default=3, help="rounds; each trains every (job, tool) once")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of every run")
    parser.add_argument("--out", default="bench-results", help="folder for results.json, results.md and the runs")
    parser.add_argument("--smoke", action="store_true", help="a few steps per run: checks that every tool trains")
    parser.add_argument("--no-warmup", dest="warmup", action="store_false",
                        help="skip the untimed smoke round that warms the page cache first")
    parser.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)  # the test suite's smoke run
    args = parser.parse_args(argv)
    args.jobs, args.tools = args.jobs.split(","), args.tools.split(",")
    for names, known in ((args.jobs, JOBS), (args.tools, TOOLS)):
        unknown = [name for name in names if name not in known]
        if unknown:
            parser.error(f"unknown {', '.join(unknown)}; choose from {', '.join(known)}")
    if "plain" not in args.tools:
        args.tools.append("plain")  # the baseline of the ratios
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    started, at_start, out = time.perf_counter(), machine(), Path(args.out)
    results: dict = {}

    def save(rows: list[dict]) -> None:
        summary, pairs = summarize(rows, args.jobs, args.tools), paired(rows, args.jobs, args.tools)
        results.update(command=" ".join(["python", "tests/benchmarks/compare.py", *(argv or sys.argv[1:])]),
                       machine=at_start, load_average_at_end=os.getloadavg(), threads=args.threads,
                       runs=len({r["round"] for r in rows}), smoke=args.smoke, elapsed_s=time.perf_counter() - started,
                       summary=summary, paired=pairs, rows=rows,
                       verdicts=verdicts(summary, pairs))
        (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
        (out / "results.md").write_text(table(summary) + "\n\n" + paired_table(pairs) + "\n\n"
                                        + "\n".join(f"- {v}" for v in results["verdicts"]) + "\n")

    run_all(args, save)
    print("\n" + table(results["summary"]) + "\n\n" + paired_table(results["paired"]) + "\n\n"
          + "\n".join(results["verdicts"]))
    return results


if __name__ == "__main__":
    main()
