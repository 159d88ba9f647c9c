"""Every shell command of the README runs as written, offline, from a fresh shell in a folder that holds only the
repository's examples and launch configs. Lines marked `# network`, `# GPU` or `# your files` are not run, nor the
set-up commands (clone, make, pip, source); training runs are shortened with `--max-steps 3`."""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from support import BIN, REPO, clean_env

pytestmark = pytest.mark.slow
SKIP = ("# network", "# GPU", "# your files")
SETUP = ("git ", "make ", "pip ", "source ")
TRAINS = re.compile(r"(accel-train train|-m accel_train train|python examples/(?!train\.py)\S+\.py"
                    r"|examples/finetune_\w+\.py)")


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip()
            if not line or line.startswith("#") or any(mark in line for mark in SKIP) or line.startswith(SETUP):
                continue
            command = line.split("  # ")[0].split(" # ")[0].strip()
            if TRAINS.search(command) and "--help" not in command:
                command += " --max-steps 3"
            commands.append(command)
    return commands


def test_the_readme_has_commands_to_run():
    commands = readme_commands()
    assert len(commands) >= 15 and any("verify" in c for c in commands) and any("report" in c for c in commands)


def test_every_offline_readme_command_runs(tmp_path):
    for name in ("examples", "launch_configs"):
        os.symlink(REPO / name, tmp_path / name)
    env = clean_env(PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    env.pop("PYTHONPATH")  # as a user's shell: accel_train is the installed package
    for command in readme_commands():
        proc = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, f"{command}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    assert (tmp_path / "runs" / "a" / "report.html").is_file() and (tmp_path / "cmp").is_dir()
