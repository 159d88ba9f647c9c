"""Run folders that stay small: what a finished run keeps.

    final weights    stored once: a Hugging Face model's `model/model.safetensors`, and a kept checkpoint's
                     weights when they are the final ones, become hard links to the run's `model.safetensors`
    checkpoints      `--keep-checkpoints 0`: a finished run keeps only its best checkpoint (while it runs, the
                     newest one is kept as well, so a preempted run still resumes where it stopped)
    optimizer state  `--save-optimizer false`: a finished run's checkpoints lose their optimizer state; they still
                     load as weights (`--restore-best`, evaluation) but are refused for `--resume`
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .checkpoint import NOT_RESUMABLE, complete_checkpoints


def share_weights(run_dir: Path) -> int:
    """Make every copy of the final weights a hard link to `model.safetensors`: a Hugging Face model's
    `model/model.safetensors` and a kept checkpoint's `model.safetensors`, each where it holds the same tensors
    under the same names (a 2-process checkpoint names them `module.*`: kept as it is). Returns the links made."""
    final = run_dir / "model.safetensors"
    if not final.is_file():
        return 0
    copies = [run_dir / "model" / "model.safetensors",
              *(path / "model.safetensors" for path in complete_checkpoints(run_dir / "checkpoints"))]
    return sum(_link_if_same(final, copy) for copy in copies if copy.is_file())


def unshare_weights(run_dir: Path) -> None:
    """Before the final weights are written again (a resumed run's end): libraries rewrite a file in place, which
    would change every hard link to it, a kept checkpoint's weights among them. Unlink the shared names first."""
    for path in (run_dir / "model.safetensors", run_dir / "model" / "model.safetensors"):
        if path.is_file() and path.stat().st_nlink > 1:
            path.unlink()


def _link_if_same(final: Path, copy: Path) -> bool:
    if os.path.samefile(final, copy) or final.stat().st_size != copy.stat().st_size:
        return False
    from safetensors import safe_open

    with safe_open(final, "pt") as a, safe_open(copy, "pt") as b:
        if set(a.keys()) != set(b.keys()) or any(not a.get_tensor(k).equal(b.get_tensor(k)) for k in a.keys()):
            return False
    link = copy.with_name(f".{copy.name}.link")
    try:
        os.link(final, link)
    except OSError:  # a filesystem without hard links keeps both copies
        return False
    os.replace(link, copy)
    return True


def tidy_checkpoints(root: Path, keep: int, best: str | None, save_optimizer: bool) -> None:
    """At the end of a finished run: keep only the best checkpoint (keep 0), drop optimizer state (save_optimizer
    false)."""
    complete = complete_checkpoints(root)
    if keep == 0 and best is not None:
        for path in complete:
            if path.name != best:
                shutil.rmtree(path, ignore_errors=True)
        complete = [p for p in complete if p.name == best]
    if not save_optimizer:
        for path in complete:
            (path / NOT_RESUMABLE).write_text("optimizer state dropped by --save-optimizer false\n")
            for state in path.glob("optimizer*.bin"):
                state.unlink()


def folder_bytes(path: Path) -> int:
    """Disk use of a folder, each hard-linked file counted once."""
    seen, total = set(), 0
    for item in Path(path).rglob("*"):
        if item.is_file() and not item.is_symlink():
            info = item.stat()
            if (info.st_dev, info.st_ino) not in seen:
                seen.add((info.st_dev, info.st_ino))
                total += info.st_size
    return total


def human(size: float) -> str:
    """1234567 -> '1.2 MB'."""
    for unit in ("B", "KB", "MB"):
        if size < 1000:
            return f"{size:.0f} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"

