"""The plain-PyTorch twin of examples/train_digits.py: the same model, data, optimizer and schedule, with the loop
written out by hand, one process on one device. Put the two side by side to see what accel_train adds (processes,
precision, accumulation, exact resume, checkpoints, the run folder) and what it leaves as it was.

    python examples/train_plain.py --epochs 15
"""

import argparse
import math

import torch
import torch.nn.functional as F

from accel_train.tasks.vision import DigitsCNN, digits_splits


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--warmup-steps", type=int, default=20)
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = DigitsCNN(args.channels).to(device)
    train_data, eval_data = digits_splits(0.2, seed=args.seed)
    train_loader = torch.utils.data.DataLoader(train_data, batch_size=args.batch_size, shuffle=True)
    eval_loader = torch.utils.data.DataLoader(eval_data, batch_size=args.batch_size)
    decay = [p for p in model.parameters() if p.dim() > 1]  # no weight decay on biases and norm weights
    rest = [p for p in model.parameters() if p.dim() <= 1]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": rest, "weight_decay": 0.0}],
                                  lr=args.lr)
    total, warmup = args.epochs * len(train_loader), args.warmup_steps  # counted in optimizer steps

    def warmup_cosine(step: int) -> float:  # linear warm-up from 0, then cosine decay to 0
        if step < warmup:
            return step / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine)
    for epoch in range(args.epochs):
        model.train()
        for x, y in train_loader:
            x, y = x.to(device), y.to(device)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        model.eval()
        correct = seen = 0
        with torch.no_grad():
            for x, y in eval_loader:
                correct += int((model(x.to(device)).argmax(1) == y.to(device)).sum())
                seen += len(y)
        print(f"epoch {epoch + 1}/{args.epochs}  train/loss {loss.item():.4f}  val/accuracy {correct / seen:.4f}")
    return correct / seen


if __name__ == "__main__":
    main()
