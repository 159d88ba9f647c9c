"""The digits job as a plain PyTorch loop: the baseline accel_train is timed against.

Same model, data split, seed, optimizer (AdamW, no decay on biases/norms), warm-up + cosine schedule, gradient
clipping, batch size and epochs as examples/configs/digits.yaml; per-epoch train loss/accuracy and validation.
Prints one JSON line: training seconds (train loops only), validation accuracy, samples/s.

    python tests/benchmarks/plain_digits.py --threads 1
"""

import argparse
import json
import math
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from accel_train.tasks.vision import DigitsCNN, digits_splits


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = DigitsCNN(32)
    train_data, val_data = digits_splits(0.2, seed=0)
    generator = torch.Generator().manual_seed(0)
    train_loader = DataLoader(train_data, batch_size=32, shuffle=True, generator=generator)
    val_loader = DataLoader(val_data, batch_size=32)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                                  lr=0.003)
    total, warmup = args.epochs * len(train_loader), 20

    def factor(step):
        if step < warmup:
            return step / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / (total - warmup))))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    train_time, samples = 0.0, 0
    for epoch in range(args.epochs):
        model.train()
        tick = time.perf_counter()
        loss_sum, correct, seen = torch.zeros(()), torch.zeros((), dtype=torch.long), 0
        for x, y in train_loader:
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            loss_sum += loss.detach() * len(y)
            correct += (logits.argmax(1) == y).sum()
            seen += len(y)
        train_time += time.perf_counter() - tick
        samples += seen
        model.eval()
        val_correct = 0
        with torch.no_grad():
            for x, y in val_loader:
                val_correct += (model(x).argmax(1) == y).sum().item()
        print(f"epoch {epoch + 1} train/loss {loss_sum.item() / seen:.4f} train/accuracy {correct.item() / seen:.4f} "
              f"val/accuracy {val_correct / len(val_data):.4f}")
    torch.save(model.state_dict(), "/dev/null")
    print(json.dumps({"train_time_s": train_time, "val_accuracy": val_correct / len(val_data),
                      "samples_per_s": samples / train_time}))


if __name__ == "__main__":
    main()
