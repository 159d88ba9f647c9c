"""The training side of the metrics: the `Meter` sums one epoch's loss, samples and metrics on the device, and
`add_up_processes` adds up evaluation sums of processes that read their own shard of a stream."""

from __future__ import annotations

import torch


class Meter:
    """Training loss, loss units, samples and metrics of one epoch, summed on the device; read at log time."""

    def __init__(self, accelerator, metrics):  # a metrics.MetricSet
        self.accelerator, self.metrics = accelerator, metrics
        self.reset()

    def reset(self) -> None:
        self.loss = torch.zeros((), device=self.accelerator.device, dtype=torch.float64)
        self.units: torch.Tensor | int = 0
        self.samples = 0
        self.logged = (0.0, 0.0)  # (loss, units) over all processes at the last interval_loss()
        self.metrics.reset()

    def update(self, out, loss: torch.Tensor, count, valid: int | None) -> None:
        self.loss.add_(loss.detach())
        self.units = self.units + count
        if valid is None:
            self.samples += len(out.losses)
            predictions, targets = out.predictions, out.targets
        else:  # a padded last batch: its first `valid` samples
            self.samples += valid
            predictions, targets = out.predictions[:valid], out.targets[:valid]
        if self.metrics.metrics:  # detached: the metric arithmetic records no graph
            self.metrics.update(predictions.detach(), targets)

    def totals(self) -> list[float]:
        """(loss, units, samples) summed over processes: one host read."""
        if self.accelerator.num_processes == 1 and not isinstance(self.units, torch.Tensor):  # counts on the host
            return [self.loss.item(), float(self.units), float(self.samples)]  # no stack for an all-reduce
        totals = torch.stack([self.loss, torch.as_tensor(self.units, device=self.loss.device).double(),
                              torch.tensor(float(self.samples), device=self.loss.device, dtype=torch.float64)])
        if self.accelerator.num_processes > 1:
            totals = self.accelerator.reduce(totals, reduction="sum")
        return totals.tolist()

    def interval_loss(self, totals: list[float] | None = None) -> float:
        """Mean loss per unit since the previous call, over all processes (from `totals()`, when given)."""
        loss, units, _ = totals or self.totals()
        (last_loss, last_units), self.logged = self.logged, (loss, units)
        return (loss - last_loss) / max(units - last_units, 1.0)

    def compute(self) -> tuple[dict[str, float], int]:
        """The epoch's loss and metrics, and its sample count, over all processes."""
        loss, units, samples = self.totals()
        self.metrics.reduce(self.accelerator)
        return {"loss": loss / max(units, 1.0), **self.metrics.compute()}, int(samples)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """This process's sums, to resume an epoch where it stopped."""
        state = {"loss": self.loss, "units": torch.as_tensor(self.units, dtype=torch.float64),
                 "units_on_host": torch.tensor(not isinstance(self.units, torch.Tensor)),
                 "samples": torch.tensor(self.samples), "logged": torch.tensor(self.logged, dtype=torch.float64)}
        for i, metric in enumerate(self.metrics.metrics):
            for j, tensor in enumerate(metric.state()):
                state[f"metric{i}.{j}"] = tensor
        return {k: v.detach().cpu().contiguous() for k, v in state.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        device = self.loss.device
        self.loss = state["loss"].to(device)
        self.units = int(state["units"]) if bool(state["units_on_host"]) else state["units"].to(device)
        self.samples, self.logged = int(state["samples"]), tuple(state["logged"].tolist())
        for i, metric in enumerate(self.metrics.metrics):
            parts = [state[k].to(device) for k in sorted((k for k in state if k.startswith(f"metric{i}.")),
                                                         key=lambda k: int(k.split(".")[1]))]
            if parts:
                metric.load_state(parts)


def add_up_processes(metrics, *totals: torch.Tensor | float) -> list:
    """Add `totals` and the metrics' state over all processes, including processes that saw no batch (and so
    hold no metric state): one object gather, for evaluation on shards of different sizes."""
    from accelerate.utils import gather_object

    mine = [[torch.as_tensor(t).detach().cpu() for t in totals],
            [[s.detach().cpu() for s in metric.state()] for metric in metrics.metrics]]
    parts = gather_object([mine])
    summed = [sum(part[0][i] for part in parts) for i in range(len(totals))]
    for i, metric in enumerate(metrics.metrics):
        states = [part[1][i] for part in parts if part[1][i]]
        if states:
            device = next((s.device for s in metric.state()), "cpu")
            metric.load_state([sum(column).to(device) for column in zip(*states)])
    return [s.to(t.device) if isinstance(t, torch.Tensor) else type(t)(s) for s, t in zip(summed, totals)]

