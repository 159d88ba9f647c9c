"""The end-of-run figures drawn by a helper process, so that the run does not wait for matplotlib.

Measured on the 2-core CPU the benchmarks run on: at the end of every run, importing matplotlib took 0.5-0.6 s and
drawing the three figures 0.5-0.7 s, about 10 % of the digits job's wall time. The helper starts with the run (on
the main process), imports matplotlib and draws a tiny figure while the run trains, and draws the run's figures
once training ends, while the run exports its weights; the run waits for it before it exits.

The helper loads the plotting modules alone (not the package's training imports: torch), ignores SIGINT and
SIGTERM (the run decides when to stop, and then still asks for the figures) and exits when the run's pipe
closes (the run ended, or died); a run that ends in an error kills it. Should it fail, the run draws the figures
itself, as without it.
"""

from __future__ import annotations

import select
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

from . import plots

TIMEOUT_S = 600.0  # for the helper's answer; a long run's step figure draws in seconds
HELPER = r"""
import signal, sys, types
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
package = types.ModuleType("accel_train")
package.__path__ = [sys.argv[1]]
sys.modules["accel_train"] = package  # the plotting modules without the package's __init__ (torch, Accelerate)
from accel_train import errors, plots
plots.warm_up()
for line in sys.stdin:
    try:
        plots.write_plots(__import__("pathlib").Path(line.rstrip("\n")), command="plots")
        print("ok", flush=True)
    except errors.UserError as error:
        print("say " + str(error).replace("\n", " "), flush=True)
    except Exception:
        print("failed", flush=True)
"""


class PlotWorker:
    """The helper process of one run: `draw(run_dir)` asks for the figures, `finish(say)` waits for them."""

    def __init__(self, enabled: bool):
        self.process: subprocess.Popen | None = None
        self.asked: Path | None = None
        if enabled and plots.wanted() and find_spec("matplotlib") is not None:
            try:
                self.process = subprocess.Popen(
                    [sys.executable, "-c", HELPER, str(Path(__file__).parent)], stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            except OSError:  # no process to spare: the run draws them itself
                self.process = None

    def __enter__(self) -> PlotWorker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def draw(self, run_dir: Path) -> None:
        """Start drawing the run's figures (the run's files are complete up to here)."""
        if self.process is None:
            return
        try:
            self.process.stdin.write(f"{run_dir}\n")
            self.process.stdin.flush()
            self.asked = run_dir
        except OSError:  # the helper is gone
            self.close()

    def finish(self, run_dir: Path, say) -> None:
        """The figures into RUN/plots/: the helper's, or drawn here when it could not (`plots.at_run_end`)."""
        answer = ""
        if self.process is not None and self.asked == run_dir:
            try:  # a helper that hangs is given up on: the run draws them itself
                if select.select([self.process.stdout], [], [], TIMEOUT_S)[0]:
                    answer = self.process.stdout.readline().rstrip("\n")
            except (OSError, ValueError):
                answer = ""
        self.close()
        if answer.startswith("say "):
            say(answer[4:])
        elif answer != "ok":
            plots.at_run_end(run_dir, say)

    def close(self) -> None:
        """End the helper: at once (a run that ended in an error, or figures already written)."""
        process, self.process = self.process, None
        if process is not None:
            process.kill()
            process.wait()
            for pipe in (process.stdin, process.stdout):
                try:
                    pipe.close()
                except OSError:
                    pass
