"""What the user reads while the run trains, and what the trackers record: the progress bar (or plain lines), one
logged line every `log_every` optimizer steps, one line per epoch and the final summary line. Only the main
process prints; `accelerator.log` is a no-op on the others."""

from __future__ import annotations

from typing import Any


class _Quiet:
    """The progress bar on processes that print nothing."""

    def update(self, n: int = 1) -> None: ...
    def set_postfix(self, **kwargs) -> None: ...
    def write(self, line: str) -> None: ...
    def close(self) -> None: ...


class _Lines(_Quiet):
    def write(self, line: str) -> None:
        print(line, flush=True)


def progress_bar(accelerator, show: bool, total: int, done: int):
    """A tqdm bar on the main process (`show`), plain printed lines without it, nothing on the others."""
    if not accelerator.is_main_process:
        return _Quiet()
    if not show:
        return _Lines()
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=done, desc="train", unit="step", dynamic_ncols=True, leave=False)


class StepLog:
    """The bar and the logged training lines; owns the logging cadence (every `every` optimizer steps)."""

    def __init__(self, accelerator, every: int, show_bar: bool, total: int, done: int):
        self.accelerator, self.every = accelerator, every
        self.bar = progress_bar(accelerator, show_bar, total, done)

    def due(self, step: int) -> bool:
        return step % self.every == 0

    def advance(self) -> None:
        """One optimizer step done."""
        self.bar.update(1)

    def step(self, step: int, values: dict[str, Any]) -> None:
        """Record one training line (`values` holds "train/loss") at optimizer step `step`."""
        self.accelerator.log(values, step=step)
        self.bar.set_postfix(loss=f"{values['train/loss']:.4f}", refresh=False)

    def write(self, line: str) -> None:
        self.bar.write(line)

    def close(self) -> None:
        self.bar.close()


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def epoch_line(record: dict[str, Any], epochs: int | None) -> str:
    keys = [k for k in record if k.count("/") == 1 and not k.endswith("/samples")]
    body = "  ".join(f"{k} {_fmt(record[k])}" for k in keys)
    return f"epoch {record['epoch']}{'/' + str(epochs) if epochs else ''}  {body}"


def summary_line(summary: dict[str, Any]) -> str:
    best = (f"best {summary['monitor']} {_fmt(summary['best_metric'])} at epoch {summary['best_epoch']}"
            if summary["best_metric"] is not None else "no epoch completed")
    rate = f"{summary['samples_per_s']:.0f} samples/s" if summary["samples_per_s"] else "-"
    return (f"done: {best}; {summary['wall_time_s']:.1f} s wall, {rate}, {summary['processes']} process(es), "
            f"{summary['precision']}; run folder {summary['run_dir']}{_size(summary)}")


def _size(summary: dict[str, Any]) -> str:
    from .tidy import human

    return f" ({human(summary['run_dir_bytes'])})" if summary.get("run_dir_bytes") is not None else ""
