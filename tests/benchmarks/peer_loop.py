"""A benchmark job as a hand-written loop: plain PyTorch (the baseline every tool is held against), or with
`--accelerate` the plain Accelerate loop of Accelerate's own examples (`prepare`, `accelerator.backward`,
`accelerator.clip_grad_norm_`). Forward, loss, backward, clip, step, schedule, zero_grad; a validation pass after
each epoch (untimed, as in every tool); the final weights saved once. Model, data, optimizer and schedule come from
bench_jobs (the job file's own).

    python tests/benchmarks/peer_loop.py --job digits --out /tmp/plain [--accelerate]
"""

from __future__ import annotations

import json
import sys
import time

import torch

from bench_jobs import Accuracy, Tally, parse


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    accelerate = "--accelerate" in argv
    bench, out = parse([a for a in argv if a != "--accelerate"], "a plain Accelerate loop" if accelerate else
                       "a plain PyTorch loop")
    model = bench.parts.model
    train_loader, eval_loader = bench.loader(train=True), bench.loader(train=False)
    optimizer, scheduler = bench.optimizer(model, len(train_loader))
    backward, clip, save = lambda loss: loss.backward(), torch.nn.utils.clip_grad_norm_, None
    if accelerate:
        from accelerate import Accelerator

        accelerator = Accelerator(cpu=True)
        model, optimizer, train_loader, eval_loader, scheduler = accelerator.prepare(
            model, optimizer, train_loader, eval_loader, scheduler)
        backward, clip, save = accelerator.backward, accelerator.clip_grad_norm_, accelerator.save_model
    accuracy, tally, train_time = Accuracy(bench), Tally(bench, len(train_loader)), 0.0
    for epoch in range(bench.epochs(len(train_loader))):
        model.train()
        tally.start_epoch()
        tick = time.perf_counter()
        for batch in train_loader:
            loss, n = bench.loss(model, batch)
            backward(loss)
            clip(model.parameters(), bench.cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if tally.add(loss, n):
                break
        train_time += time.perf_counter() - tick
        final = accuracy.run(model, eval_loader)
        print(tally.line(epoch + 1, final), flush=True)
    if save is None:
        torch.save(model.state_dict(), out / "model.pt")
    else:
        save(model, str(out))
    return tally.result(bench, train_time, final)


if __name__ == "__main__":
    print(json.dumps(main()))
