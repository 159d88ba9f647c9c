"""How fast the run goes and what it uses, measured where the loop already stops for the host.

    StepClock      per logging interval: step time, samples/s (tokens/s when the loss counts tokens), the share of
                   time spent waiting for the next batch (`TrainBatches.wait_s`), memory. Host clocks only: the
                   counts come from the meter's totals, read at the logging step as the loss is.
    FlopCount      the FLOPs of one optimizer step, counted once, in the run's first step, with torch's
                   FlopCounterMode (matmuls and convolutions, forward and backward); then FLOPs/s and, on a GPU
                   whose dense peak is known, MFU. On a CPU (no agreed peak) MFU stays null and FLOPs/s is given.
    SystemMonitor  per epoch: CPU %, process and system memory (psutil); GPU utilisation, memory and temperature
                   (nvidia-ml-py, when it imports and a GPU is present; absent otherwise).
    Performance    the three together, and the data-wait verdict for the log and summary.json.
"""

from __future__ import annotations

import functools
import os
import re
import sys
import time
from typing import Any

import torch

try:
    import resource
except ImportError:  # Windows
    resource = None

MB = 2**20
INPUT_BOUND = 0.5  # data waits above this share of step time: the loader dominates
PEAK_TFLOPS = (  # dense peak per GPU (NVIDIA data sheets): name contains -> (bf16/fp16, tf32, fp32); first match
    ("H100 PCIe", (756.0, 378.0, 51.0)), ("H100", (989.0, 494.0, 67.0)), ("H200", (989.0, 494.0, 67.0)),
    ("A100", (312.0, 156.0, 19.5)), ("L40S", (362.0, 183.0, 91.6)), ("L4", (121.0, 60.0, 30.3)),
    ("A10", (125.0, 62.5, 31.2)))


def memory(device: torch.device) -> dict[str, float]:
    """Peak GPU memory allocated by this process, or on the CPU its peak resident memory."""
    if device.type == "cuda":
        return {"perf/peak_gpu_memory_mb": torch.cuda.max_memory_allocated(device) / MB}
    return {"perf/peak_rss_mb": _peak_rss() / MB}


def _peak_rss() -> float:
    """This process's peak resident memory in bytes: one system call (getrusage). psutil opens and parses /proc on
    every call: 115 us of a logging step, measured on a 2-core CPU."""
    if resource is None:  # Windows
        return _process(os.getpid()).memory_info().peak_wset
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB elsewhere


@functools.cache
def _process(pid: int):
    """psutil's handle on this process, made once (making one costs more than reading its memory)."""
    import psutil

    return psutil.Process(pid)


def verdict(data_wait: float | None, num_workers: int) -> str | None:
    """'input-bound: ...' when the loader dominates the step time, else None."""
    if data_wait is None or data_wait <= INPUT_BOUND:
        return None
    workers = 4 if num_workers == 0 else 2 * num_workers
    return f"input-bound: {data_wait * 100:.0f} % of step time waiting for data; try --num-workers {workers}"


class StepClock:
    """Time, samples and data waits since the previous logging step (or the epoch's start, or a resume)."""

    def __init__(self, batches):
        self.batches = batches
        self.restart(0)

    def restart(self, step: int, totals: list[float] | None = None) -> None:
        self.started, self.paused, self.step = time.perf_counter(), 0.0, step
        self.totals, self.wait = totals or [0.0, 0.0, 0.0], self.batches.wait_s

    def pause(self, seconds: float) -> None:
        """`seconds` of the interval that were not training (a checkpoint written)."""
        self.paused += seconds

    def interval(self, step: int, totals: list[float], tokens: bool) -> dict[str, float]:
        """The interval's figures; `totals` are the meter's (loss, units, samples) over all processes."""
        wall = max(time.perf_counter() - self.started - self.paused, 1e-9)
        units, samples = totals[1] - self.totals[1], totals[2] - self.totals[2]
        values = {"perf/step_time_s": wall / max(step - self.step, 1), "perf/samples_per_s": samples / wall,
                  "perf/data_wait": min((self.batches.wait_s - self.wait) / wall, 1.0)}
        if tokens:
            values["perf/tokens_per_s"] = units / wall
        self.restart(step, totals)
        return values


class FlopCount:
    """FLOPs of one optimizer step on this process, counted during the first step (`begin` ... `end`)."""

    def __init__(self, enabled: bool):
        self.enabled, self.mode, self.per_step = enabled, None, None

    def begin(self) -> None:
        if self.enabled and self.per_step is None and self.mode is None:
            from torch.utils.flop_counter import FlopCounterMode

            self.mode = FlopCounterMode(display=False)
            self.mode.__enter__()

    def end(self) -> None:
        if self.mode is not None:
            mode, self.mode = self.mode, None
            mode.__exit__(None, None, None)
            self.per_step = mode.get_total_flops() or None


def peak_flops(device: torch.device, half: bool, tf32: bool = False) -> float | None:
    """The dense peak FLOPs/s of this GPU in the run's precision (autocast, TF32 or plain fp32), when known."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peaks in PEAK_TFLOPS:
        if re.search(rf"\b{key}\b", name):  # a whole word: A10 is not A10G, L4 not L40
            return peaks[0 if half else 1 if tf32 else 2] * 1e12
    return None


class SystemMonitor:
    """CPU and memory of this process and machine; the GPU's utilisation, memory and temperature via NVML."""

    def __init__(self, device: torch.device):
        import psutil

        self.psutil, self.process = psutil, _process(os.getpid())
        self.process.cpu_percent(None)  # starts the interval the first sample reports on
        self.gpu = _nvml_handle(device) if device.type == "cuda" else None

    def sample(self) -> dict[str, float]:
        system = self.psutil.virtual_memory()
        values = {"sys/cpu_percent": self.process.cpu_percent(None),
                  "sys/process_rss_mb": self.process.memory_info().rss / MB,
                  "sys/memory_used_mb": (system.total - system.available) / MB, "sys/memory_percent": system.percent}
        if self.gpu is not None:
            import pynvml

            try:
                values.update({
                    "gpu/utilization_percent": float(pynvml.nvmlDeviceGetUtilizationRates(self.gpu).gpu),
                    "gpu/memory_used_mb": pynvml.nvmlDeviceGetMemoryInfo(self.gpu).used / MB,
                    "gpu/temperature_c": float(pynvml.nvmlDeviceGetTemperature(self.gpu, pynvml.NVML_TEMPERATURE_GPU))})
            except pynvml.NVMLError:  # a GPU that does not report (some virtual GPUs): left out
                pass
        return values


def _nvml_handle(device: torch.device):
    """This process's GPU in NVML (by UUID: CUDA_VISIBLE_DEVICES renumbers devices), or None."""
    try:
        import pynvml

        pynvml.nvmlInit()
        index = device.index if device.index is not None else torch.cuda.current_device()
    except Exception:  # not installed, no driver: the GPU figures are simply absent
        return None
    try:
        uuid = str(torch.cuda.get_device_properties(index).uuid)
        return pynvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith("GPU-") else f"GPU-{uuid}")
    except Exception:  # an older torch, a device NVML names otherwise: by index (right without renumbering)
        try:
            return pynvml.nvmlDeviceGetHandleByIndex(index)
        except Exception:
            return None


class Performance:
    """The run's performance figures: per logging step (`step_values`), per epoch (`epoch_values`), at the end."""

    def __init__(self, batches, device: torch.device, processes: int, count_flops: bool, num_workers: int,
                 peak: float | None = None):
        self.batches, self.device, self.processes, self.num_workers = batches, device, processes, num_workers
        self.clock, self.flops, self.system = StepClock(batches), FlopCount(count_flops), SystemMonitor(device)
        self.peak = peak  # FLOPs/s of one device, for MFU
        self.started: float | None = None  # this process's first step
        self.first_step = 0
        self.epoch_started = self.epoch_wait = self.train_s = self.run_train_s = 0.0
        self.last: dict[str, Any] = {}  # the latest figures, for the summary

    @classmethod
    def for_run(cls, batches, accelerator, cfg) -> Performance:
        """FLOPs are counted for eager models (FlopCounterMode sees neither compiled graphs nor the kernels of
        DeepSpeed, FSDP or Megatron), by default on a GPU only: the first step under FlopCounterMode costs about
        1.6 s (measured on the 2-core CPU, the digits CNN: 1.63 s, then 6 ms), a third of a small CPU job's training
        time, while MFU needs a GPU's peak anyway."""
        sharded = accelerator.distributed_type.value in ("FSDP", "DEEPSPEED", "MEGATRON_LM")
        peak = peak_flops(accelerator.device, half=accelerator.mixed_precision != "no", tf32=cfg.tf32)
        wanted = cfg.count_flops if cfg.count_flops is not None else accelerator.device.type == "cuda"
        return cls(batches, accelerator.device, accelerator.num_processes,
                   count_flops=wanted and cfg.compile == "off" and not sharded, num_workers=cfg.num_workers, peak=peak)

    def start_epoch(self, step: int, totals: list[float] | None = None) -> None:
        now = time.perf_counter()
        if self.started is None:
            self.started, self.first_step = now, step
        self.clock.restart(step, totals)
        self.epoch_started, self.epoch_wait, self.train_s = now, self.batches.wait_s, 0.0

    def step_values(self, step: int, totals: list[float], tokens: bool) -> dict[str, float]:
        values = self.clock.interval(step, totals, tokens)
        if self.flops.per_step is not None:
            values["perf/flops_per_s"] = self.flops.per_step * self.processes / values["perf/step_time_s"]
            if self.peak:
                values["perf/mfu"] = self.flops.per_step / values["perf/step_time_s"] / self.peak
        values.update(memory(self.device))
        self.last.update(values)
        return values

    def add_train_time(self, seconds: float) -> None:
        self.train_s += seconds
        self.run_train_s += seconds

    def epoch_values(self, step: int, total_steps: int) -> dict[str, float]:
        """Epoch time (training and validation), ETA, the epoch's data-wait share and the system's figures."""
        now = time.perf_counter()
        done = max(step - self.first_step, 1)
        values = {"time/epoch_s": now - self.epoch_started,
                  "time/eta_s": (now - (self.started or now)) / done * max(total_steps - step, 0)}
        if self.train_s > 0:
            values["perf/epoch_data_wait"] = min((self.batches.wait_s - self.epoch_wait) / self.train_s, 1.0)
        values.update(self.system.sample())
        self.last.update(values)
        return values

    def summary(self) -> dict[str, Any]:
        """For summary.json: the latest figures, FLOPs per step, MFU (null without a known peak), the verdict."""
        figures = {k.split("/", 1)[1]: v for k, v in self.last.items()}
        if self.run_train_s > 0:  # over this process's whole run, not the last epoch's
            figures["data_wait"] = min(self.batches.wait_s / self.run_train_s, 1.0)
        figures.update(flops_per_step=self.flops.per_step, mfu=figures.get("mfu"),
                       peak_flops_per_s=self.peak, input_bound=verdict(figures.get("data_wait"), self.num_workers))
        return figures

    def close(self) -> None:
        self.flops.end()
