"""The README stays true: its script is examples/train.py, and it names every flag, launch config and example."""

from __future__ import annotations

import dataclasses
import re

from accel_train import TrainConfig
from support import REPO

README = (REPO / "README.md").read_text()


def test_readme_script_is_the_example_file():
    block = re.search(r"```python\n# examples/train.py\n(.*?)```", README, re.S).group(1)
    assert block.strip() == (REPO / "examples" / "train.py").read_text().split('"""', 2)[2].strip()


def test_readme_names_every_flag_launch_config_and_example():
    for field in dataclasses.fields(TrainConfig):
        assert f"--{field.name.replace('_', '-')}" in README, field.name
    for config in (REPO / "launch_configs").glob("*.yaml"):
        assert f"launch_configs/{config.name}" in README, config.name
    for example in (REPO / "examples").glob("*.py"):
        assert f"examples/{example.name}" in README, example.name
    for job in (REPO / "examples" / "configs").glob("*.yaml"):
        assert f"examples/configs/{job.name}" in README, job.name
    assert "make demo" in README and "make test" in README
