"""An exponential moving average of the weights (`--ema-decay 0.999`, or `fit(ema=EMA(0.999))`).

torch's `AveragedModel` with `get_ema_multi_avg_fn` keeps the average on the model's device, parameters and
buffers (batch-norm statistics) alike. It is updated once per optimizer step by a post-step hook on the torch
optimizer, which runs only when the optimizer really steps: not inside an accumulation window, not for a step
skipped for a non-finite loss, not when fp16's grad scaler skips one (a fused optimizer that skips a non-finite
update on the device still counts it: an update towards unchanged weights). Every process updates its own copy
from the same all-reduced weights, so the copies agree under DDP; the main process saves it in each checkpoint
(`register_for_checkpointing`) and every process loads it back on resume. As in torch, the first update copies
the weights; update n then keeps `decay` of the average (with `warmup`: `min(decay, (1 + n) / (10 + n))`).

With `evaluate` (`--eval-ema`) validation, the best checkpoint and the exported model use the averaged weights.
"""

from __future__ import annotations

from typing import Any

import torch


class NoEMA:
    """No EMA: validation and export use the trained model."""

    evaluate = False

    def attach(self, accelerator, model: torch.nn.Module, optimizer) -> None: ...

    def for_eval(self, model: torch.nn.Module) -> torch.nn.Module:
        return model


class EMA(NoEMA):
    """The averaged weights of one run; after `fit`, `ema.module` is the averaged model.

    Args:
        decay: share of the average kept at each update (0.999: about the last 1,000 steps).
        warmup: lower the decay in the first updates, `min(decay, (1 + n) / (10 + n))`, so that the average
            forgets the first weights sooner.
        evaluate: validate and export with the averaged weights.
    """

    def __init__(self, decay: float = 0.999, warmup: bool = False, evaluate: bool = False):
        if not 0.0 <= decay <= 1.0:
            from .errors import UserError

            raise UserError(f"the EMA decay must lie in [0, 1] (got {decay}), for example --ema-decay 0.999.")
        self.decay, self.warmup, self.evaluate = decay, warmup, evaluate
        self.averaged: Any = None  # torch's AveragedModel, made by `attach`
        self.updates = 0  # updates so far, kept on the host (the average's own count lives on the device)
        self._model: torch.nn.Module | None = None

    @property
    def module(self) -> torch.nn.Module:
        """The averaged model (a copy of the trained model holding the averaged weights)."""
        if self.averaged is None:
            raise RuntimeError("the EMA is not attached to a model yet: fit() attaches it")
        return self.averaged.module

    def attach(self, accelerator, model: torch.nn.Module, optimizer) -> None:
        """Start averaging `model` (prepared), updated after each step of `optimizer` (prepared), and checkpoint
        the average with the run."""
        from torch.optim.swa_utils import AveragedModel

        from .errors import UserError

        if accelerator.distributed_type.value in ("FSDP", "DEEPSPEED"):
            raise UserError(f"--ema-decay keeps a full copy of the weights on each process; it cannot average "
                            f"{accelerator.distributed_type.value}'s sharded parameters. Drop --ema-decay.")
        self._model = accelerator.unwrap_model(model, keep_torch_compile=False)
        self.averaged = AveragedModel(self._model, multi_avg_fn=self._average, use_buffers=True)
        self.averaged.eval()
        self.averaged.requires_grad_(False)
        getattr(optimizer, "optimizer", optimizer).register_step_post_hook(self._after_step)
        accelerator.register_for_checkpointing(self)

    def decay_at(self, update: int) -> float:
        """The decay of update `update` (0 is the first, which copies)."""
        return min(self.decay, (1 + update) / (10 + update)) if self.warmup else self.decay

    def _average(self, averaged: list[torch.Tensor], current: list[torch.Tensor], count) -> None:
        """One update of tensors of one device and dtype."""
        from torch.optim.swa_utils import get_ema_multi_avg_fn

        if averaged[0].is_floating_point():
            get_ema_multi_avg_fn(self.decay_at(self.updates))(averaged, current, count)
        else:  # counters (batch norm's num_batches_tracked): the model's own, not an average
            for mine, theirs in zip(averaged, current):
                mine.copy_(theirs)

    def _after_step(self, optimizer, args, kwargs) -> None:
        self.averaged.update_parameters(self._model)
        self.updates += 1

    def for_eval(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model to validate and export: the averaged one with `evaluate` once it has been updated."""
        return self.module if self.evaluate and self.updates else model

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.averaged.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.averaged.load_state_dict(state)
        self.updates = int(self.averaged.n_averaged)  # one host read, at resume

    def describe(self) -> str:
        return (f"EMA of the weights, decay {self.decay}{' with warm-up' if self.warmup else ''}"
                f"{'; validation, best checkpoint and export use it' if self.evaluate else ''}")
