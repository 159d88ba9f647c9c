"""Quiet by default: a run prints the plan, its own lines and the summary, not third-party progress bars, load
reports or warnings about its own setup; `--verbose` shows them again."""

from __future__ import annotations

import pytest

from accel_train.quiet import DEFAULTS
from support import REPO, check, clean_env, run_python
from support.text import MINILM

NOISE = ("LOAD REPORT", "Map:", "Writing model shards", "Loading weights", "Generating train split",
         "bos_token_id", "eos_token_id", "Removed shared tensor")


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """The README's offline causal-LM command (a fresh GPT-2 sized to the MiniLM tokenizer, tied weights), 2 steps,
    quiet and verbose."""
    env = {k: v for k, v in clean_env().items() if k not in DEFAULTS}
    runs = {}
    for verbose in ("false", "true"):
        out = tmp_path_factory.mktemp("lm") / "run"
        proc = check(run_python([str(REPO / "examples/train_causal_lm.py"), "--config", "examples/configs/lm_topics.yaml",
                                 "--job.tokenizer", MINILM, "--max-steps", "2", "--output-dir", str(out),
                                 "--progress", "false", "--verbose", verbose], env=env))
        runs[verbose] = proc.stdout + proc.stderr
    return runs


def test_a_run_prints_only_its_own_lines(outputs):
    assert [word for word in NOISE if word in outputs["false"]] == []
    lines = outputs["false"].strip().splitlines()
    assert lines[0].startswith("accel_train plan  ->") and lines[-1].startswith("done: ")


def test_verbose_shows_the_libraries_again_and_the_token_ids_come_from_the_tokenizer(outputs):
    assert "Removed shared tensor {'lm_head.weight'}" in outputs["true"]  # the filter is ours, and it can be lifted
    assert "bos_token_id" not in outputs["true"] and "eos_token_id" not in outputs["true"]  # fixed, not hidden
