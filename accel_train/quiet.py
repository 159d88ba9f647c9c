"""Third-party chatter off unless `--verbose`: transformers' load reports and advisory warnings, and the progress
bars of transformers (loading and writing weights), datasets (`Map`, `Generating train split`) and the Hub.

Also dropped: Accelerate's "Removed shared tensor ... while saving" for tied weights (a causal LM's `lm_head` shares
the embedding matrix). safetensors stores shared storage once; loading ties them again, and resuming such a model
ends bitwise equal to an uninterrupted run (tests/test_golden.py's causal LM, tests/tasks/test_text.py).

What stays: errors, the Hub's network warnings (a retry says why a run is slow to start), and every warning of
torch, Accelerate and accel_train. A variable the user set in the environment wins over these defaults.
"""

from __future__ import annotations

import logging
import os
import sys

DEFAULTS = {
    "TRANSFORMERS_VERBOSITY": "error",  # e.g. the LOAD REPORT listing a new classifier head as MISSING
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
}


class _DropTiedWeightNote(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Removed shared tensor" not in record.getMessage()


_TIED = _DropTiedWeightNote()


def quiet_libraries(verbose: bool = False) -> None:
    """Apply the defaults above (for libraries imported later, and to those already imported)."""
    saving = logging.getLogger("accelerate.utils.other")
    if verbose:
        saving.removeFilter(_TIED)
        return
    saving.addFilter(_TIED)
    for name, value in DEFAULTS.items():
        os.environ.setdefault(name, value)
    if "transformers" in sys.modules and os.environ["TRANSFORMERS_VERBOSITY"] == "error":
        from transformers.utils import logging as transformers_logging

        transformers_logging.set_verbosity_error()
        transformers_logging.disable_progress_bar()
    if "datasets" in sys.modules and os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] == "1":
        import datasets

        datasets.disable_progress_bars()
    if "huggingface_hub" in sys.modules and os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1":
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
