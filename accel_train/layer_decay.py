"""Layer-wise learning-rate decay for transformer finetuning (`--layer-lr-decay 0.9`).

The layers are found by their parameter names, as Hugging Face models spell them: numbered blocks under a tower
(`bert.encoder.layer.N`, CLIP's `text_model.encoder.layers.N` and `vision_model.encoder.layers.N`, GPT-2's
`transformer.h.N`). In a tower of L layers, layer N (from 0) trains at `lr * decay ** (L - N)`, the tower's
embeddings at `lr * decay ** (L + 1)`, and everything above the layers (pooler, classifier, projections) at `lr`.
Each tower of a two-tower model (CLIP) counts its own layers. One optimizer group per layer and weight-decay kind,
named after the layer (`name`), highest LR first; every group's LR is logged (`lr`, `lr_group_1`, ...).
"""

from __future__ import annotations

import re
import torch

from .errors import UserError

LAYER = re.compile(r"^(?P<container>(?:.*\.)?(?:layer|layers|h|block|blocks))\.(?P<index>\d+)\.")
EMBEDDING = re.compile(r"embed|wte|wpe|pre_layrnorm|pre_layernorm", re.IGNORECASE)
STACKS = ("encoder", "decoder", "transformer")  # the module holding the layers, under the tower's root


def _root(container: str) -> str:
    """`bert.encoder.layer` -> `bert`, `text_model.encoder.layers` -> `text_model`, `transformer.h` -> `transformer`."""
    parts = container.split(".")[:-1]
    if len(parts) > 1 and parts[-1] in STACKS:
        parts = parts[:-1]
    return ".".join(parts)


def towers(names: list[str]) -> dict[str, int]:
    """Each tower's root and its number of layers."""
    depth: dict[str, int] = {}
    for name in names:
        found = LAYER.match(name)
        if found:
            root = _root(found.group("container"))
            depth[root] = max(depth.get(root, 0), int(found.group("index")) + 1)
    return depth


def layer_of(name: str, depth: dict[str, int]) -> tuple[str, int]:
    """(group name, exponent of the decay) for one parameter."""
    found = LAYER.match(name)
    if found:
        root, index = _root(found.group("container")), int(found.group("index"))
        return f"{root or 'model'}.layer_{index}", depth[root] - index
    if EMBEDDING.search(name):  # the embeddings of the tower they sit in (else of the deepest tower)
        inside = [root for root in depth if not root or name.startswith(f"{root}.")]
        root = max(inside, key=len) if inside else max(depth, key=depth.__getitem__)
        return f"{root or 'model'}.embeddings", depth[root] + 1
    return "head", 0


def layer_groups(model: torch.nn.Module, weight_decay: float, lr: float, decay: float) -> list[dict]:
    """Optimizer groups: one per layer and weight-decay kind (none on biases and norms), each at its own LR."""
    if not 0.0 < decay <= 1.0:
        raise UserError(f"layer_lr_decay must lie in (0, 1] (got {decay}), for example --layer-lr-decay 0.9.")
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    depth = towers([n for n, _ in named])
    if not depth:
        raise UserError(f"--layer-lr-decay needs a transformer with numbered layers (encoder.layer.N, "
                        f"encoder.layers.N, h.N); {type(model).__name__} has none. Drop --layer-lr-decay.")
    groups: dict[tuple[str, bool], dict] = {}
    for name, param in named:
        layer, power = layer_of(name, depth)
        decays = param.dim() >= 2
        group = groups.setdefault((layer, decays), {"params": [], "weight_decay": weight_decay if decays else 0.0,
                                                     "lr": lr * decay ** power, "name": layer})
        group["params"].append(param)
    return sorted(groups.values(), key=lambda g: -g["lr"])


def describe(model: torch.nn.Module, decay: float) -> str:
    """The plan's line: the towers, their layers and the LR factors from the embeddings to the head."""
    depth = towers([n for n, p in model.named_parameters() if p.requires_grad])
    shown = ", ".join(f"{root or 'model'} {layers} layers" for root, layers in depth.items())
    lowest = decay ** (max(depth.values(), default=0) + 1)
    return f"layer LR decay {decay} ({shown}): LR x {lowest:.3g} (embeddings) to x 1 (head)"
