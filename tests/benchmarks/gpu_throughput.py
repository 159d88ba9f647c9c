"""GPU throughput through accel_train's own loop: GPT-2 small (124 M, from a config, synthetic tokens) in bf16 with
SDPA, torch.compile and fused AdamW, and ResNet-50 at 224x224 in bf16 channels_last; against the device's practical
peak, measured here as a dense bf16 matmul.

    python tests/benchmarks/gpu_throughput.py --out gpu.json        # on a CUDA machine (H100/H200: a few minutes)
    python tests/benchmarks/gpu_throughput.py --smoke                # tiny sizes, any device (the suite runs this)

Each model trains twice, for `--short` and `--long` optimizer steps: their training-time difference is the steady
state (tokens/s, images/s), and the short run's excess over it is the compile warm-up, reported separately. MFU
counts 6 x parameters + 12 x layers x width x sequence FLOPs per token (forward and backward, attention included).
Targets on one H100: >= 400 K tokens/s for GPT-2 small, >= 2,800 images/s for ResNet-50. `sync_free`: 20 optimizer
steps in fp32 and bf16 under `torch.cuda.set_sync_debug_mode("error")` (`host_sync` is null when none synced).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import Dataset

from accel_train import Task, TrainConfig, fit


class Repeated(Dataset):
    """`n` samples that are all `sample` (synthetic data costs no I/O)."""

    def __init__(self, sample, n: int):
        self.sample, self.n = sample, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int):
        return self.sample


def matmul_peak(size: int, repeats: int) -> float:
    """bf16 dense matmul FLOP/s on this device (0 off CUDA)."""
    if not torch.cuda.is_available():
        return 0.0
    a, b = (torch.randn(size, size, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize()
    return 2 * size ** 3 * repeats / (time.perf_counter() - start)


def timed(make_model, data, task, settings: dict, steps: int, folder: Path) -> float:
    """Training seconds of `steps` optimizer steps through fit()."""
    torch.manual_seed(0)
    cfg = TrainConfig(output_dir=str(folder), max_steps=steps, progress=False, log_every=max(steps, 1), **settings)
    return fit(make_model(), data, task=task, config=cfg)["train_time_s"]


def measure(name: str, make_model, data, task, settings: dict, per_step: int, short: int, long: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        first = timed(make_model, data, task, settings, short, Path(tmp) / "short")
        second = timed(make_model, data, task, settings, long, Path(tmp) / "long")
    step = (second - first) / (long - short)
    return {"model": name, "per_step": per_step, "step_s": step, "per_s": per_step / step,
            "warmup_s": first - short * step, "settings": settings}


def gpt2(args) -> dict:
    from transformers import GPT2Config, GPT2LMHeadModel

    from accel_train.tasks.causal_lm import CausalLMTask

    small = dict(n_layer=2, n_embd=64, n_head=2, n_positions=32) if args.smoke else {}
    config = GPT2Config(vocab_size=50304, attn_implementation="sdpa", **small)  # 50304: a multiple of 64
    length, batch = config.n_positions, args.gpt_batch
    ids = torch.randint(0, config.vocab_size, (length,), generator=torch.Generator().manual_seed(0))
    sample = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    settings = dict(batch_size=batch, lr=6e-4, weight_decay=0.1, max_grad_norm=1.0, optimizer_impl=args.optimizer_impl,
                    compile=args.compile, mixed_precision=args.precision)
    result = measure("gpt2", lambda: GPT2LMHeadModel(config), Repeated(sample, batch * (args.long + 1)),
                     CausalLMTask(), settings, batch * length, args.short, args.long)
    params = sum(p.numel() for p in GPT2LMHeadModel(config).parameters())
    result["tokens_per_s"] = result["per_s"]
    result["flops_per_token"] = 6 * params + 12 * config.n_layer * config.n_embd * length
    return result


def resnet50(args) -> dict:
    from torchvision.models import resnet18, resnet50

    size = 32 if args.smoke else 224
    make = (lambda: resnet18(num_classes=10)) if args.smoke else (lambda: resnet50())
    batch = args.image_batch
    sample = (torch.randn(3, size, size), torch.tensor(1))
    settings = dict(batch_size=batch, optimizer="sgd", lr=0.1, channels_last=True, compile=args.compile,
                    mixed_precision=args.precision, num_workers=args.workers, optimizer_impl=args.optimizer_impl)
    result = measure("resnet50" if not args.smoke else "resnet18", make, Repeated(sample, batch * (args.long + 1)),
                     Task("cross_entropy", []), settings, batch, args.short, args.long)
    result["images_per_s"] = result["per_s"]
    return result


def sync_free(precision: str, steps: int = 20) -> dict:
    """`steps` optimizer steps of accel_train's `train_step` (fused AdamW, max-norm clipping, the non-finite guard,
    accumulation 2) under `torch.cuda.set_sync_debug_mode("error")`: any host sync raises. On a CPU the steps run
    without the check (tests/test_loop.py counts host reads there)."""
    from torch import nn

    from accel_train import train_step
    from accel_train.gradients import GradientWindow, NonFiniteGuard
    from accel_train.internals import skip_on_device
    from accel_train.launch import make_accelerator, shutdown

    cuda = torch.cuda.is_available()
    accelerator, _ = make_accelerator(TrainConfig(grad_accum=2, cpu=not cuda, mixed_precision=precision))
    model = nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 10))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    model, optimizer = accelerator.prepare(model, optimizer)
    guard = NonFiniteGuard("skip")
    guard.defer_to(skip_on_device(optimizer))
    grads, task = GradientWindow(accelerator, model, max_grad_norm=1.0, guard=guard), Task("cross_entropy", []).for_run()
    batches = [(torch.randn(32, 64, device=accelerator.device), torch.randint(0, 10, (32,), device=accelerator.device))
               for _ in range(2 * steps + 4)]
    for batch in batches[:4]:  # warm-up: the first step checks the labels once
        train_step(accelerator, model, task, batch, optimizer, scheduler, grads)
    error = None
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
    try:
        for batch in batches[4:]:
            train_step(accelerator, model, task, batch, optimizer, scheduler, grads)
    except RuntimeError as caught:
        error = str(caught).splitlines()[0]
    finally:
        if cuda:
            torch.cuda.set_sync_debug_mode("default")
    shutdown(accelerator)
    return {"precision": precision, "steps": steps, "checked": cuda, "host_sync": error}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny models and few steps, on any device")
    parser.add_argument("--out", default=None, help="write the figures here as JSON")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    args.short, args.long = (2, 8) if args.smoke else (10, 60)
    args.gpt_batch, args.image_batch = (4, 8) if args.smoke else (16, 256)
    args.compile = "full" if cuda else "off"
    args.precision = "bf16" if cuda else "no"
    args.optimizer_impl, args.workers = ("fused", 8) if cuda else ("auto", 0)
    figures = {"device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__,
               "matmul_bf16_flops": matmul_peak(8192, 50) if cuda and not args.smoke else 0.0,
               "sync_free": [sync_free(p) for p in ("no", "bf16")], "gpt2": gpt2(args), "resnet": resnet50(args)}
    if figures["matmul_bf16_flops"]:
        gpt = figures["gpt2"]
        gpt["mfu"] = gpt["tokens_per_s"] * gpt["flops_per_token"] / figures["matmul_bf16_flops"]
    text = json.dumps(figures, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return figures


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
