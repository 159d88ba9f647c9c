"""Train a tiny float64 GPT-2 with SGD on texts of very different lengths (one padded text a sequence); the tests
compare the final weights of runs that cut the same optimizer steps into different micro-batches and processes.

    python tests/scripts/lm_tokens.py --data DIR --batch-size 8 --output-dir RUN ...
    accelerate launch --config_file launch_configs/cpu_ddp.yaml tests/scripts/lm_tokens.py --data DIR \
        --batch-size 2 --grad-accum 2 --output-dir RUN ...

DIR holds train.csv, validation.csv and the model's config and tokenizer (tests/text_helpers.py makes them). The
validation split is streamed, so under 2 processes each evaluates its own part, of a different size.
"""

from dataclasses import dataclass, replace

import torch

from accel_train import fit, parse_config
from accel_train.tasks.causal_lm import CausalLMOptions, causal_lm_data, causal_lm_model
from accel_train.launch import leave


@dataclass
class Options:
    data: str = ""  # folder with train.csv, validation.csv, config.json and the tokenizer


def build(opts: Options, seed: int = 0):
    """(model, train data, streamed validation data, TextData)"""
    lm = CausalLMOptions(model=None, model_config=opts.data, tokenizer=opts.data, train_file=f"{opts.data}/train.csv",
                         validation_file=f"{opts.data}/validation.csv", cache_dir=f"{opts.data}/cache",
                         block_size=64, packing=False)
    data = causal_lm_data(lm, seed)
    streamed = causal_lm_data(replace(lm, streaming=True), seed)
    torch.manual_seed(1234)
    model = causal_lm_model(lm, data.tokenizer).double()
    return model, data.train, streamed.eval, data


if __name__ == "__main__":
    cfg, opts = parse_config(options=Options)
    model, train, val, data = build(opts, cfg.seed)
    fit(model, train, val, task=data.task, collate_fn=data.collator, config=cfg)
    leave(0)  # a launched script ends without Python's teardown (see accel_train.launch.leave)
