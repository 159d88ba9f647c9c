"""The package's shape: no import cycles (lazy imports included), small modules and functions, the tasks in their
own folder, and the core importable without `datasets`, `transformers` or `wandb`."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from support import REPO

PACKAGE = REPO / "accel_train"


def _modules() -> dict[str, Path]:
    return {".".join(f.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): f
            for f in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            target = ".".join(base[: len(base) - node.level + 1] + ([node.module] if node.module else [])) \
                if node.level else node.module or ""
            children = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in modules]
            candidates = children or [target]  # `from . import plan` imports the module plan, not the package
        elif isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        else:
            continue
        for candidate in candidates:
            while candidate and candidate not in modules:
                candidate = candidate.rpartition(".")[0]
            if candidate and candidate != name:
                found.add(candidate)
    return found


def test_no_import_cycles():
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in graph[start] - seen:
            seen.add(nxt)
            if nxt == goal or reaches(nxt, goal, seen):
                return True
        return False

    cycles = [name for name in graph if reaches(name, name, set())]
    assert cycles == []


def test_modules_and_functions_stay_small():
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        assert len(text.splitlines()) <= 350, path
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                assert node.end_lineno - node.lineno + 1 <= 60, f"{path}:{node.name}"


def test_every_task_family_has_its_module():
    families = {p.stem for p in (PACKAGE / "tasks").glob("*.py")}
    assert {"vision", "text", "causal_lm", "clip", "clip_digits", "fusion"} <= families


def test_the_core_imports_without_the_optional_packages():
    code = ("import sys; sys.modules.update(datasets=None, transformers=None, wandb=None, torchvision=None); "
            "import accel_train, accel_train.fit, accel_train.cli, accel_train.tasks.vision")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
