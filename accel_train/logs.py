"""What the user reads while the run trains, and what the trackers record: the progress bar (or plain lines), one
logged line every `log_every` optimizer steps, one line per epoch and the final summary line. Only the main
process prints; `accelerator.log` is a no-op on the others."""

from __future__ import annotations

import sys
from typing import Any

from .tracking import log_kwargs


class _Quiet:
    """The progress bar on processes that print nothing."""

    def update(self, n: int = 1) -> None: ...
    def set_postfix(self, **kwargs) -> None: ...
    def write(self, line: str) -> None: ...
    def close(self) -> None: ...


class _Lines(_Quiet):
    """Off a terminal (CI, cluster logs, nohup): plain lines, no redraws."""

    def write(self, line: str) -> None:
        print(line, flush=True)


def progress_bar(accelerator, show: bool, total: int, done: int):
    """On the main process: a tqdm bar when `show` and stdout is a terminal, else plain lines; nothing elsewhere."""
    if not accelerator.is_main_process:
        return _Quiet()
    if not (show and getattr(sys.stdout, "isatty", lambda: False)()):
        return _Lines()
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=done, desc="train", unit="step", dynamic_ncols=True, leave=False)


class StepLog:
    """The bar (or a plain line per logging step off a terminal) and the logged training values; owns the logging
    cadence (every `every` optimizer steps)."""

    def __init__(self, accelerator, every: int, show_bar: bool, total: int, done: int):
        self.accelerator, self.every, self.total, self.show = accelerator, every, total, show_bar
        self.bar = progress_bar(accelerator, show_bar, total, done)

    def due(self, step: int) -> bool:
        return step % self.every == 0

    def advance(self) -> None:
        """One optimizer step done."""
        self.bar.update(1)

    def step(self, step: int, values: dict[str, Any]) -> None:
        """Record one training line (`values` holds "train/loss", "lr", "perf/...") at optimizer step `step`."""
        self.accelerator.log(values, step=step, log_kwargs=log_kwargs("step"))
        rate = values.get("perf/samples_per_s")
        if isinstance(self.bar, _Lines):
            if self.show:
                self.bar.write(step_line(step, self.total, values))
            return
        self.bar.set_postfix(loss=f"{values['train/loss']:.4f}", lr=f"{values['lr']:.2e}",
                             **({"samples/s": f"{rate:.0f}"} if rate is not None else {}), refresh=False)

    def write(self, line: str) -> None:
        self.bar.write(line)

    def close(self) -> None:
        self.bar.close()


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def step_line(step: int, total: int, values: dict[str, Any]) -> str:
    """`step 20/400  loss 0.4512  lr 1.00e-03  grad_norm 0.83  2710 samples/s  data wait 3 %  eta 0:01:10`."""
    parts = [f"step {step}/{total}", f"loss {values['train/loss']:.4f}", f"lr {values['lr']:.2e}"]
    if "grad_norm" in values:
        parts.append(f"grad_norm {values['grad_norm']:.3g}")
    if "perf/tokens_per_s" in values:
        parts.append(f"{values['perf/tokens_per_s']:.0f} tokens/s")
    if "perf/samples_per_s" in values:
        parts += [f"{values['perf/samples_per_s']:.0f} samples/s", f"data wait {values['perf/data_wait'] * 100:.0f} %",
                  f"eta {_duration(values['perf/step_time_s'] * max(total - step, 0))}"]
    return "  ".join(parts)


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def epoch_line(record: dict[str, Any], epochs: int | None) -> str:
    keys = [k for k in record if k.startswith(("train/", "val/")) and not k.endswith("/samples")]
    body = "  ".join(f"{k} {_fmt(record[k])}" for k in keys)
    timing = f"  {record['time/epoch_s']:.1f} s, eta {_duration(record['time/eta_s'])}" if "time/epoch_s" in record else ""
    return f"epoch {record['epoch']}{'/' + str(epochs) if epochs else ''}  {body}{timing}"


def summary_line(summary: dict[str, Any]) -> str:
    best = (f"best {summary['monitor']} {_fmt(summary['best_metric'])} at epoch {summary['best_epoch']}"
            if summary["best_metric"] is not None else "no epoch completed")
    rate = f"{summary['samples_per_s']:.0f} samples/s" if summary["samples_per_s"] else "-"
    return (f"done: {best}; {summary['wall_time_s']:.1f} s wall, {rate}, {summary['processes']} process(es), "
            f"{summary['precision']}; run folder {summary['run_dir']}{_size(summary)}")


def _size(summary: dict[str, Any]) -> str:
    from .tidy import human

    return f" ({human(summary['run_dir_bytes'])})" if summary.get("run_dir_bytes") is not None else ""
