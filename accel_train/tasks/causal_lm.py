"""Causal language models: next-token data (packed blocks or padded texts), the token-level loss, perplexity.

    data = causal_lm_data(opts, seed)    # tokenized splits, collator, CausalLMTask
    fit(model, data.train, data.eval, task=data.task, collate_fn=data.collator, processor=data.tokenizer, ...)

The task returns each sequence's loss summed over its target tokens and the number of those tokens, so the loop
divides the gradients of every optimizer step by the target tokens of the whole accumulation window on all
processes: each token weighs the same, however the sequences fall into micro-batches and processes (the mean of
per-micro-batch means weighs the tokens of short sequences more). Validation's loss is the same token-weighted
mean over the whole validation set, and perplexity is its exp.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import UserError
from ..job import Job, Parts
from ..metrics import Metric
from ..task import Output, full_precision, logits_of
from .text_data import (TextData, TextSource, TextTask, check_batch_keys, check_texts, columns_of, load_pretrained,
    load_texts, load_tokenizer, per_process, text_column)

IGNORE = -100  # label of positions that are not predicted (padding)


@dataclass
class CausalLMOptions(TextSource):
    """A decoder-only language model trained or finetuned on raw text."""

    model: str | None = "gpt2"  # Hub name or folder of a pretrained model (or, with --job.model-config, its tokenizer)
    model_config: str | None = None  # train from scratch: an architecture (gpt2, llama, ...) or a config.json/folder
    config_overrides: dict[str, Any] = field(default_factory=dict)  # with model_config: {n_layer: 4, n_embd: 256}
    block_size: int = 128  # tokens per training sequence
    packing: bool = True  # concatenate texts and cut them into full blocks; false: one text a sequence, padded


class Perplexity(Metric):
    """exp of the mean loss per target token, from the task's per-sequence loss sums and token counts."""

    def __init__(self):
        self.reset()

    def update(self, predictions: torch.Tensor, targets: torch.Tensor) -> None:
        self._add(predictions.double().sum(), targets.double().sum())

    def compute(self) -> dict[str, float]:
        if self._state is None:
            return {}
        total, tokens = (float(t) for t in self._state)
        return {"perplexity": math.exp(min(total / max(tokens, 1.0), 700.0))}  # exp(700) is near float's limit


class CausalLMTask(TextTask):
    """Next-token prediction: `model(input_ids, attention_mask)`, then cross-entropy of each position's logits
    against the following token (`labels` shifted by one, -100 ignored), summed per sequence.

    Output: losses = each sequence's summed token losses, counts = its target tokens; the metrics read the same two
    (Perplexity), never the logits, so validation gathers two numbers per sequence rather than a vocabulary each.
    """

    def __init__(self):
        super().__init__(loss=None, metrics=[Perplexity()])

    def forward(self, model, batch):
        inputs = {key: value for key, value in batch.items() if key != "labels"}
        if not self.checked:
            check_batch_keys(model, inputs)
            if "labels" not in batch:
                raise UserError("a causal-LM batch needs `labels` (the input ids, with -100 where nothing is "
                                "predicted): use the collator of causal_lm_data().")
        return model(**inputs), batch["labels"]

    def losses(self, output: Any, targets: torch.Tensor) -> Output:
        logits = full_precision(logits_of(output))[:, :-1]
        labels = targets[:, 1:]
        per_token = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE,
                                    reduction="none").view(labels.shape)
        losses, counts = per_token.sum(1), (labels != IGNORE).sum(1)
        return Output(losses, counts, losses.detach(), counts)


def causal_lm_data(opts: CausalLMOptions, seed: int = 0) -> TextData:
    """Tokenized training and validation splits of next-token sequences, with their collator and task.

    Packing (the default) concatenates the texts, each closed by the end-of-text token, and cuts them into blocks
    of `block_size` tokens, all predicted; without packing each text is one sequence, truncated to `block_size`
    and padded per batch (padding is not predicted).
    """
    from transformers import DataCollatorForLanguageModeling, default_data_collator

    if opts.block_size < 2:
        raise UserError(f"block_size must be at least 2 (got {opts.block_size}).")
    tokenizer = load_tokenizer(opts.tokenizer or opts.model, opts.trust_remote_code)
    train, val = load_texts(opts, seed)
    text = text_column(train, opts.text_column, "train")
    text_column(val, text, "validation")
    if opts.packing:
        make, collator = _blocks, default_data_collator
    else:
        if tokenizer.pad_token is None:  # GPT-2 has none; padding is masked out of the loss anyway
            tokenizer.pad_token = tokenizer.eos_token
        make, collator = _texts, DataCollatorForLanguageModeling(tokenizer, mlm=False)
    splits = []
    for data, split in ((train, "train"), (val, "validation")):
        tokenize = partial(make, tokenizer=tokenizer, column=text, block_size=opts.block_size, split=split)
        data = data.map(tokenize, batched=True, with_indices=True, remove_columns=columns_of(data))
        if hasattr(data, "__len__") and len(data) == 0:
            raise UserError(f"the {split} data gives no sequence: it holds fewer than block_size={opts.block_size} "
                            "tokens (with packing) or only empty texts. Lower --job.block-size or add text.")
        splits.append(per_process(data, train=split == "train", seed=seed) if opts.streaming else data)
    return TextData(splits[0], splits[1], tokenizer, collator, CausalLMTask())


def _blocks(batch: dict, indices: list[int], *, tokenizer, column: str, block_size: int, split: str) -> dict:
    check_texts(batch[column], indices, column, split)
    eos = tokenizer.eos_token_id  # BERT-style tokenizers close each text with [SEP] already
    flat: list[int] = []
    for ids in tokenizer(batch[column], return_token_type_ids=False)["input_ids"]:
        flat.extend(ids)
        if eos is not None and ids and ids[-1] != eos:
            flat.append(eos)
    end = len(flat) // block_size * block_size  # the tail of this map batch, shorter than a block, is dropped
    blocks = [flat[i:i + block_size] for i in range(0, end, block_size)]
    return {"input_ids": blocks, "attention_mask": [[1] * block_size for _ in blocks], "labels": [list(b) for b in blocks]}


def _texts(batch: dict, indices: list[int], *, tokenizer, column: str, block_size: int, split: str) -> dict:
    check_texts(batch[column], indices, column, split)
    encoded = tokenizer(batch[column], truncation=True, max_length=block_size, return_token_type_ids=False)
    keep = [i for i, ids in enumerate(encoded["input_ids"]) if len(ids) >= 2]  # a target needs two tokens
    return {key: [values[i] for i in keep] for key, values in encoded.items()}


def _special_ids(tokenizer: Any) -> dict[str, int | None]:
    """The model config's token ids from the tokenizer, so a fresh model never keeps its architecture's defaults
    (GPT-2's 50256, outside a BERT-style vocabulary): BERT-style tokenizers open with [CLS] and close with [SEP]."""
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else getattr(tokenizer, "cls_token_id", None)
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else getattr(tokenizer, "sep_token_id", None)
    return {"bos_token_id": bos, "eos_token_id": eos, "pad_token_id": tokenizer.pad_token_id}


def causal_lm_model(opts: CausalLMOptions, tokenizer: Any) -> torch.nn.Module:
    """A pretrained causal LM (`--job.model`), or a fresh one of `--job.model-config` sized to the tokenizer."""
    from transformers import AutoConfig, AutoModelForCausalLM

    remote = {"trust_remote_code": True} if opts.trust_remote_code else {}
    if opts.model_config is None:
        if opts.model is None:
            raise UserError("give --job.model (a pretrained causal LM) or --job.model-config (to train one from "
                            "scratch).")
        model = load_pretrained(AutoModelForCausalLM, opts.model, opts.trust_remote_code)
    else:
        special = _special_ids(tokenizer)
        sizes = {"vocab_size": len(tokenizer), **special, **opts.config_overrides}
        try:
            config = (AutoConfig.from_pretrained(opts.model_config, **remote, **sizes) if Path(opts.model_config).exists()
                      else AutoConfig.for_model(opts.model_config, **sizes))
        except (OSError, ValueError) as error:
            raise UserError(f"cannot build a model from --job.model-config {opts.model_config}: "
                            f"{str(error).splitlines()[0][:300]}") from None
        model = AutoModelForCausalLM.from_config(config, **remote)
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        raise UserError(f"the tokenizer has {len(tokenizer)} tokens but the model only "
                        f"{model.get_input_embeddings().num_embeddings} embeddings: use the model's own tokenizer.")
    model.config.use_cache = False  # training needs no key/value cache
    return model


@dataclass
class CausalLM(CausalLMOptions, Job):
    """A causal language model, pretrained or from a config, trained on raw text; loss per token and perplexity.
    The tokenizer is saved beside the model in `<run>/model/`."""

    def build(self, seed: int) -> Parts:
        data = causal_lm_data(self, seed)
        return Parts(causal_lm_model(self, data.tokenizer), data.train, data.eval, data.task, data.collator,
                     processor=data.tokenizer)
