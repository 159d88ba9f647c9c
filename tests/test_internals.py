"""accel_train.internals holds every private Accelerate and torch API the project uses: each one is still there,
and the optimizer patch changes no number."""

from __future__ import annotations

import ast
import importlib

import pytest

from accel_train import internals
from support import REPO

PRIVATE = ("_reset_state", "_is_accelerate_prepared", "_original_forward", "_foreach_mul_", "_ConvNd", "_BatchNorm",
           "_DropoutNd", "_orig_mod")


def test_every_private_api_is_still_there():
    assert internals.missing() == [], (
        f"accel_train/internals.py relies on {internals.missing()}, which the installed accelerate/torch no longer "
        "has: update that module for the new version")


def test_no_other_module_uses_a_private_api():
    for path in (REPO / "accel_train").rglob("*.py"):
        if path.name == "internals.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in PRIVATE:
                raise AssertionError(f"{path.relative_to(REPO)}:{node.lineno} uses {node.attr}: move it to internals")


def test_the_lean_step_is_used_and_changes_no_bit(tmp_path, monkeypatch, cifar_copy, one_thread):
    """The golden digits job with the patch on and off: the same losses and weights, bit for bit."""
    from golden.jobs import compare, run

    import torch

    seen, calls = [], []
    original, original_step = internals.trim_optimizer_overhead, internals.trim_step_overhead
    fit_module = importlib.import_module("accel_train.fit")
    monkeypatch.setattr(fit_module, "trim_optimizer_overhead",
                        lambda optimizer: (original(optimizer), seen.append(type(optimizer).__name__)))
    lean = lambda acc: (acc.backward is internals._backward, acc.clip_grad_norm_ is torch.nn.utils.clip_grad_norm_,  # noqa: E731
                        acc.accumulate.__qualname__.startswith("_sync_every_batch"))
    monkeypatch.setattr(fit_module, "trim_step_overhead",
                        lambda accelerator, model: (original_step(accelerator, model), calls.append(lean(accelerator))))
    patched = run("digits", cifar_copy, tmp_path / "on")
    monkeypatch.setattr(internals, "PATCH_ACCELERATE", False)
    plain = run("digits", cifar_copy, tmp_path / "off")
    assert seen == ["_LeanAcceleratedOptimizer", "AcceleratedOptimizer"]
    assert calls == [(True, True, True), (False, False, False)]  # torch's backward and clipping, then Accelerate's
    assert patched == plain
    compare("digits", patched)


@pytest.mark.parametrize("name", ["gradient_divisor", "scale_tensors_", "original_forward", "mark_prepared",
                                  "trim_step_overhead"])
def test_internals_are_documented_in_the_module_docstring(name):
    assert name in internals.__doc__


@pytest.mark.parametrize("dtypes", ["float32", "float64", "bfloat16", "float32,float64,float32"])
def test_scaling_by_a_number_gives_torchs_own_products_bit_for_bit(dtypes):
    """scale_tensors_ passes a number on the CPU as a 0-d tensor (faster) only where the products stay the same."""
    import torch

    generator = torch.Generator().manual_seed(0)
    dtypes = [getattr(torch, name) for name in dtypes.split(",")] * 3
    for units in (1, 3, 7, 32, 1000, 4093):
        tensors = [torch.randn(n, generator=generator, dtype=dtype) * 10.0 ** e
                   for (n, e), dtype in zip(((5, -4), (3000, 0), (17, 3)), dtypes)]
        expected = [t.clone() for t in tensors]
        torch._foreach_mul_(expected, 1 / units)
        internals.scale_tensors_(tensors, 1 / units)
        assert all(torch.equal(a, b) for a, b in zip(tensors, expected))
