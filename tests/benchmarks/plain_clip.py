"""The CLIP benchmark's baseline: a plain hand-written Accelerate loop over what examples/finetune_clip.py trains.

Same local model folder and processor, same image-caption files, collation, batch size, AdamW (CLIP's betas, no
decay on biases/norms/temperature), warm-up + cosine schedule, gradient clipping, clamped temperature and epochs;
CLIP's own loss (`return_loss=True`); a validation loss pass each epoch (untimed, as accel_train's).
Prints one JSON line: training seconds (train loops only), samples, samples/s.

    python tests/benchmarks/plain_clip.py --model DIR --train-file train.csv --validation-file val.csv --threads 1
"""

import argparse
import json
import math
import time

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from transformers import AutoModel, AutoProcessor

from accel_train.tasks.captions import ImageCaptionCollator, read_pairs


def main() -> None:
    parser = argparse.ArgumentParser()
    for flag in ("--model", "--train-file", "--validation-file"):
        parser.add_argument(flag, required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-4)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    set_seed(0)
    accelerator = Accelerator(cpu=True)
    model, processor = AutoModel.from_pretrained(args.model), AutoProcessor.from_pretrained(args.model)
    collate = ImageCaptionCollator(processor, model.config.text_config.max_position_embeddings)
    train_loader = DataLoader(read_pairs(args.train_file, "image_path"), batch_size=args.batch_size, shuffle=True,
                              collate_fn=collate)
    val_loader = DataLoader(read_pairs(args.validation_file, "image_path"), batch_size=args.batch_size,
                            collate_fn=collate)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                                  lr=args.lr, betas=(0.9, 0.98))
    total, warmup = args.epochs * len(train_loader), 10

    def factor(step):
        if step < warmup:
            return step / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    model, optimizer, train_loader, val_loader = accelerator.prepare(model, optimizer, train_loader, val_loader)
    inputs = ("pixel_values", "input_ids", "attention_mask")
    train_time, samples = 0.0, 0
    for _ in range(args.epochs):
        model.train()
        tick = time.perf_counter()
        for batch in train_loader:
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            loss = model(**{k: batch[k] for k in inputs}, return_loss=True).loss
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            samples += len(batch["input_ids"])
        train_time += time.perf_counter() - tick
        model.eval()
        with torch.no_grad():
            val_loss = sum(float(model(**{k: b[k] for k in inputs}, return_loss=True).loss) for b in val_loader)
    print(json.dumps({"train_time_s": train_time, "samples": samples, "samples_per_s": samples / train_time,
                      "val_loss": val_loss / len(val_loader)}))


if __name__ == "__main__":
    main()
