"""The README stays true: its script is examples/train.py, and it names every flag, launch config and example."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys

from accel_train import TrainConfig
from support import REPO, clean_env

README = (REPO / "README.md").read_text()


def test_readme_script_is_the_example_file():
    block = re.search(r"```python\n# examples/train.py\n(.*?)```", README, re.S).group(1)
    assert block.strip() == (REPO / "examples" / "train.py").read_text().split('"""', 2)[2].strip()


def test_the_flag_reference_is_generated_from_the_field_comments_and_names_every_flag():
    from accel_train.flags import job_classes, reference

    page = (REPO / "examples" / "configs" / "README.md").read_text()
    assert page == reference(TrainConfig), "regenerate: python -m accel_train.config > examples/configs/README.md"
    for field in dataclasses.fields(TrainConfig):
        assert f"| `--{field.name.replace('_', '-')}` |" in page, field.name
    assert "](examples/configs/README.md)" in README
    jobs = {f"{job.__module__}.{job.__qualname__}" for job in job_classes()}
    assert {"accel_train.tasks.vision.Digits", "accel_train.tasks.text.TextClassification"} <= jobs


def test_help_shows_every_flag_dash_spelled_with_its_meaning_and_the_jobs_options(capsys):
    import pytest

    from accel_train.cli import main

    with pytest.raises(SystemExit) as done:
        main(["train", "--config", str(REPO / "examples/configs/digits.yaml"), "--help"])
    out = capsys.readouterr().out
    assert done.value.code == 0 and out.startswith("usage: accel-train train [--config JOB.yaml]")
    for field in dataclasses.fields(TrainConfig):
        assert f"  --{field.name.replace('_', '-')} " in out, field.name
    assert "  --batch-size                per device; effective batch = batch_size x processes x grad_accum " in out
    assert "job options (Digits):" in out and "  --job.channels              width of the first conv block" in out


def test_readme_names_every_launch_config_and_example():
    for config in (REPO / "launch_configs").glob("*.yaml"):
        assert f"launch_configs/{config.name}" in README, config.name
    for example in (REPO / "examples").glob("*.py"):
        assert f"examples/{example.name}" in README, example.name
    for job in (REPO / "examples" / "configs").glob("*.yaml"):
        assert f"examples/configs/{job.name}" in README, job.name
    assert "make demo" in README and "make test" in README


def test_a_mistake_in_the_readme_script_is_one_line(tmp_path):
    """The script as a user edits it: a config built before fit with batch size 0 prints one line, exit 2."""
    script = (REPO / "examples" / "train.py").read_text().replace("batch_size=32", "batch_size=0")
    (tmp_path / "train.py").write_text(script)
    proc = subprocess.run([sys.executable, str(tmp_path / "train.py")], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path, env=clean_env())
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == "accel_train: error: batch_size must be at least 1 (got 0). Set --batch-size to 1 or more.\n"
