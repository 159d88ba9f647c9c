"""Which CPU kernels compute the golden numbers: pinned to one instruction set, and fingerprinted.

torch picks its CPU kernels by the instruction sets the processor has: ATen's vectorised loops (AVX2 or AVX-512
lanes), MKL's matrix products and oneDNN's convolutions. Different kernels add in different orders, so the same
fp32 job gives other last bits on another CPU: the golden files written on one 2-core machine differed from a
second machine's (an Intel Xeon with AVX-512 and AMX) from the 4th of the digits job's 20 losses, by 2e-7
relative. `pin()` makes every CPU with AVX2 run the AVX2 kernels (it acts only before torch is imported: the
suite's conftest and `jobs.py` call it first), and `fingerprint()` hashes the bits of a small computation through
the kernels the golden jobs use, so that a golden file says which kernels wrote it.
"""

from __future__ import annotations

import functools
import hashlib
import os

PINS = {
    "ATEN_CPU_CAPABILITY": "avx2",  # ATen's vectorised kernels
    "MKL_CBWR": "AVX2",  # MKL's conditional numerical reproducibility: its AVX2 code path on any AVX2 CPU
    "ONEDNN_MAX_CPU_ISA": "AVX2",  # oneDNN's convolutions
}


def pin() -> None:
    """Ask for the AVX2 kernels (a variable the caller set is kept)."""
    for key, value in PINS.items():
        os.environ.setdefault(key, value)


@functools.cache  # the same in a whole process: the kernels are chosen once, when torch is imported
def fingerprint() -> str:
    """SHA-256 (16 hex digits) of a fixed fp32 forward, backward and fused AdamW step through convolution, batch
    norm, matrix products, layer norm, embeddings, attention and GELU, on one thread."""
    import torch
    from torch import nn

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            conv, norm, linear = nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Linear(8 * 10 * 10, 16)
            embed, layer_norm, attention = nn.Embedding(50, 16), nn.LayerNorm(16), nn.MultiheadAttention(16, 2)
            parts = [conv, norm, linear, embed, layer_norm, attention]
            images, tokens = torch.randn(4, 3, 12, 12), torch.randint(0, 50, (5, 4))
            features = linear(torch.relu(norm(conv(images))).flatten(1))  # (4, 16)
            words = layer_norm(embed(tokens))  # (5, 4, 16)
            attended, _ = attention(features.unsqueeze(0), words, words)
            logits = nn.functional.gelu(attended[0] + features)
            pooled = nn.functional.max_pool2d(conv(images), 2).flatten(1)  # (4, 200)
            loss = (nn.functional.cross_entropy(logits, torch.arange(4)) + logits.softmax(-1).pow(2).sum()
                    + nn.functional.cross_entropy(pooled, torch.arange(4) * 50, reduction="sum") / 1000
                    + nn.functional.log_softmax(pooled, -1).mean())
            loss.backward()
            params = [p for part in parts for p in part.parameters()]
            grads = [p.grad for p in params]
            norm = torch.nn.utils.get_total_norm(grads)  # vectorised reductions over long rows
            torch._foreach_mul_(grads, torch.tensor(0.5, dtype=torch.float64))
            outputs = [loss.detach(), logits.detach(), norm, images.sum(), images.square().mean(), *grads]
            torch.optim.AdamW(params, lr=0.01, fused=True).step()
            outputs += [p.detach() for p in params]
    finally:
        torch.set_num_threads(threads)
    digest = hashlib.sha256()
    for tensor in outputs:
        digest.update(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]
