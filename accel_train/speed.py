"""Per-step costs that Accelerate 1.x adds to every optimizer step, removed without changing behaviour.

Measured on a 2-core CPU with a small MLP (2.4 ms step): `AcceleratedOptimizer.step` calls `is_lomo_available()`
twice per step, an uncached `importlib.util.find_spec` that stats every `sys.path` entry (~67 us each), and
`AcceleratedOptimizer.zero_grad` runs `inspect.signature` on the wrapped optimizer every step (~44 us). Package
availability and an optimizer's signature cannot change while a process runs, so both are answered once.
"""

from __future__ import annotations

import functools
import inspect

import accelerate.optimizer as accelerated
from accelerate.optimizer import AcceleratedOptimizer


class _OptimizerWithCheapZeroGrad(AcceleratedOptimizer):
    """AcceleratedOptimizer whose wrapped optimizer is known to take `set_to_none`."""

    def zero_grad(self, set_to_none=None):
        if self.gradient_state.sync_gradients:  # as Accelerate does: gradients accumulate inside a window
            self.optimizer.zero_grad(set_to_none=True if set_to_none is None else set_to_none)


def trim_optimizer_overhead(optimizer) -> None:
    """Apply both fixes to a prepared optimizer (a no-op for other wrappers, e.g. DeepSpeed's)."""
    if not hasattr(accelerated.is_lomo_available, "cache_info"):
        accelerated.is_lomo_available = functools.lru_cache(maxsize=None)(accelerated.is_lomo_available)
    if type(optimizer) is AcceleratedOptimizer and "set_to_none" in inspect.signature(
            optimizer.optimizer.zero_grad).parameters:
        optimizer.__class__ = _OptimizerWithCheapZeroGrad
