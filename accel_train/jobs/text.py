"""Text jobs for `accel-train train --config JOB.yaml`: a finetuned sequence classifier and a causal language model.

Their options are the flags of examples/finetune_bert.py and examples/train_causal_lm.py (`--job.model`,
`--job.train_file`, ...); the run folder's `model/` gets the tokenizer next to the model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..causal_lm import CausalLMOptions, causal_lm_data, causal_lm_model
from ..text import TextClassificationOptions, classification_data, load_pretrained
from . import Job, Parts


class _SavesTokenizer:
    loaded_tokenizer: Any = None  # set by build(); not an option

    def after_fit(self, summary: dict[str, Any], run_dir: str) -> None:
        """The tokenizer goes next to the model in `<run>/model/`, so that `from_pretrained` and pipelines work."""
        if self.loaded_tokenizer is not None and os.environ.get("RANK", "0") == "0":
            self.loaded_tokenizer.save_pretrained(Path(run_dir) / "model")


@dataclass
class TextClassification(_SavesTokenizer, TextClassificationOptions, Job):
    """A pretrained BERT-style model finetuned to classify texts or text pairs; accuracy, macro-F1, per-class
    precision and recall."""

    def build(self, seed: int) -> Parts:
        from transformers import AutoModelForSequenceClassification

        data = classification_data(self, seed)
        model = load_pretrained(AutoModelForSequenceClassification, self.model, self.trust_remote_code,
                                ignore_mismatched_sizes=True, **data.label_config())
        self.loaded_tokenizer = data.tokenizer
        return Parts(model, data.train, data.eval, data.task, data.collator)


@dataclass
class CausalLM(_SavesTokenizer, CausalLMOptions, Job):
    """A causal language model, pretrained or from a config, trained on raw text; loss per token and perplexity."""

    def build(self, seed: int) -> Parts:
        data = causal_lm_data(self, seed)
        self.loaded_tokenizer = data.tokenizer
        return Parts(causal_lm_model(self, data.tokenizer), data.train, data.eval, data.task, data.collator)
