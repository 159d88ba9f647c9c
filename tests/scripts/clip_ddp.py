"""A small CLIP on the digits under `accelerate launch` (2 processes) or plain python (1 process); the main process
writes what it measured to the JSON file named by argv[1]:

  gathered   (2 processes) each process takes half of a 16-pair batch and contrasts it with the other half through
             the all-gather: the summed loss and gradients against the whole batch's in one process (CLIP's own loss)
  eval       retrieval recall and zero-shot accuracy of seeded weights over the 360 validation pairs, eval batch
             argv[2] per process (360 is no multiple of 2 x 16: Accelerate pads the last batch)
  fit        a short training run with batch argv[3] per process (gathered negatives under DDP); weights in the run
             folder argv[4]
"""

import json
import os
import sys

import torch
import torch.distributed as dist

from accel_train import TrainConfig, evaluate, fit
from accel_train.data import make_loader
from accel_train.tasks.clip_digits import ClipDigits
from accel_train.launch import leave, make_accelerator
from accel_train.tasks.clip import MODEL_INPUTS, contrastive_losses


def build():
    torch.manual_seed(0)
    return ClipDigits(width=32, layers=1).build(seed=0)


def gathered_loss(accelerator) -> dict:
    """The all-gather loss of the processes' halves against the whole batch's loss in one process."""
    parts = build()
    model = parts.model.train()
    batch = parts.collate_fn([parts.train_data[i] for i in range(16)])
    inputs = {key: batch[key] for key in MODEL_INPUTS}
    whole = model(**inputs, return_loss=True).loss  # CLIP's own loss over all 16 pairs
    whole.backward()
    reference = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    n = 16 // accelerator.num_processes
    rows = slice(accelerator.process_index * n, (accelerator.process_index + 1) * n)
    out = model(**{key: value[rows] for key, value in inputs.items()})
    losses = contrastive_losses(out.image_embeds, out.text_embeds, model.logit_scale, gather=True)
    losses.sum().backward()
    total = losses.detach().sum()
    dist.all_reduce(total)
    grads = [p.grad for p in model.parameters()]
    for grad in grads:  # what DDP's averaging and the loop's division by all samples amount to
        dist.all_reduce(grad)
    scale = max(float(g.abs().max()) for g in reference)
    return {"loss": float(total / 16), "reference_loss": float(whole),
            "loss_diff": abs(float(total / 16) - float(whole)),
            "grad_diff": max(float((g / 16 - r).abs().max()) for g, r in zip(grads, reference)), "grad_scale": scale}


def main(out: str, eval_batch: int, train_batch: int, run_dir: str) -> None:
    accelerator, _ = make_accelerator(TrainConfig(num_threads=1))
    report = {"processes": accelerator.num_processes}
    if accelerator.num_processes > 1:
        report["gathered"] = gathered_loss(accelerator)

    parts = build()
    loader = make_loader(parts.eval_data, batch_size=eval_batch, shuffle=False, collate_fn=parts.collate_fn)
    model, loader = accelerator.prepare(parts.model, loader)
    report["eval"] = evaluate(accelerator, model, parts.task, loader)

    parts = build()
    train = torch.utils.data.Subset(parts.train_data, range(256))
    cfg = TrainConfig(output_dir=run_dir, epochs=2, batch_size=train_batch, lr=2e-3, scheduler="cosine_warmup",
                      warmup_steps=3, max_grad_norm=1.0, weight_decay=0.1, num_threads=1, progress=False, log_every=1)
    report["fit"] = fit(parts.model, train, None, task=parts.task, collate_fn=parts.collate_fn, config=cfg)
    if os.environ.get("RANK", "0") == "0":
        with open(out, "w") as handle:
            json.dump(report, handle)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
    leave(0)  # a launched script ends without Python's teardown (see accel_train.launch.leave)
