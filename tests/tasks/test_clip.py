"""CLIP training in one process: the end-token trap, our contrastive loss against CLIP's own, the clamped
temperature, retrieval counted by caption text, and a short training run on real digits whose retrieval and
zero-shot accuracy are far above chance and whose exported model reloads and scores the same."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from accel_train import UserError, read_summary
from accel_train.cli import main as cli_main
from accel_train.tasks.clip import ClipTask, Retrieval, contrastive_losses
from support import REPO
from support.multimodal import CAPTIONS, clip_config, write_tokenizer_files


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("tokenizer")
    write_tokenizer_files(folder)
    return AutoTokenizer.from_pretrained(folder)


def small_clip(tokenizer, tokenizer_ids: bool = True):
    from transformers import CLIPModel

    torch.manual_seed(0)
    return CLIPModel(clip_config(tokenizer, tokenizer_ids=tokenizer_ids)).eval()


def batch_of(tokenizer, captions: list[str]) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    n = len(captions)
    return {"pixel_values": torch.randn(n, 3, 8, 8, generator=generator),
            **tokenizer(captions, padding=True, return_tensors="pt"),
            "image_id": torch.arange(n), "caption_id": torch.tensor([CAPTIONS.index(c) for c in captions])}


def test_small_clip_pools_each_caption_at_its_end_token(tokenizer):
    captions = [CAPTIONS[7], CAPTIONS[1], CAPTIONS[0]]
    encoded = tokenizer(captions + ["a digit"], padding=True, return_tensors="pt")
    assert tokenizer.convert_ids_to_tokens(encoded["input_ids"][0]) == [
        "<|startoftext|>", "a</w>", "handwritten</w>", "digit</w>", "seven</w>", "<|endoftext|>"]
    model = small_clip(tokenizer)
    eos = model.config.text_config.eos_token_id
    assert eos == tokenizer.eos_token_id == len(tokenizer) - 1 == model.config.text_config.vocab_size - 1
    last = encoded["attention_mask"].sum(1) - 1  # each caption ends with the end token; padding follows it
    assert encoded["input_ids"][torch.arange(4), last].tolist() == [eos] * 4
    assert torch.equal((encoded["input_ids"] == eos).int().argmax(1), last)
    with torch.no_grad():
        out = model.text_model(**encoded)
    assert torch.equal(out.pooler_output, out.last_hidden_state[torch.arange(4), last])


def test_clip_default_end_token_outside_a_small_vocabulary_is_refused(tokenizer):
    model = small_clip(tokenizer, tokenizer_ids=False)
    assert model.config.text_config.eos_token_id == 49407 > len(tokenizer)
    end = len(tokenizer) - 1
    with pytest.raises(UserError, match=rf"3 of 3 captions .* no end token 49407 .* ends captions with {end}"):
        ClipTask(tokenizer)(model, batch_of(tokenizer, CAPTIONS[:3]))


def test_our_contrastive_loss_equals_clips_own_loss_and_gradients(tokenizer):
    model = small_clip(tokenizer).train()
    batch = batch_of(tokenizer, [CAPTIONS[i % 10] for i in range(12)])
    inputs = {k: batch[k] for k in ("pixel_values", "input_ids", "attention_mask")}
    own = model(**inputs, return_loss=True).loss
    own.backward()
    own_grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    out = model(**inputs)
    ours = contrastive_losses(out.image_embeds, out.text_embeds, model.logit_scale)
    assert ours.shape == (12,)
    ours.mean().backward()
    assert abs(ours.mean().item() - own.item()) <= 1e-6 and own.item() > 1.0
    # Equal up to float32 rounding (gradients reach 5.7 here): at most 1.4e-6 of the largest gradient on AVX-512
    # kernels, below 1e-6 on AVX2; a wrong loss is off by far more.
    for name, p in model.named_parameters():
        assert (p.grad - own_grads[name]).abs().max() <= 1e-5 * max(1.0, own_grads[name].abs().max()), name


def test_temperature_is_learned_and_clamped_as_clip_does(tokenizer):
    model = small_clip(tokenizer).train()
    task = ClipTask(tokenizer)
    batch = batch_of(tokenizer, CAPTIONS[:8])
    with torch.no_grad():
        model.logit_scale.fill_(7.0)  # a scale of e^7 = 1097
    task(model, batch).losses.sum().backward()
    assert model.logit_scale.item() == pytest.approx(math.log(100))  # at most 100, as CLIP
    assert model.logit_scale.grad is not None and model.logit_scale.grad.abs().item() > 0  # still learned
    with torch.no_grad():
        model.logit_scale.fill_(-1.0)
    task(model, batch)
    assert model.logit_scale.item() == 0.0
    with torch.no_grad():
        model.logit_scale.fill_(2.5)
    task(model, batch)
    assert model.logit_scale.item() == 2.5


def test_retrieval_counts_a_hit_when_the_caption_text_is_right():
    """Images I0, I1 share caption C0; image I2 has two captions C1, C2 (rows 2 and 3 repeat I2)."""
    e = torch.eye(4)
    images = torch.stack([e[0], e[1], e[2], e[2]])
    c0, c1, c2 = F.normalize(e[1] + 0.5 * e[0], dim=0), e[2], F.normalize(e[0] + 0.5 * e[2] + e[3], dim=0)
    texts = torch.stack([c0, c0, c1, c2])
    metric = Retrieval(recall_at=(1, 2, 5))
    for rows in (slice(0, 2), slice(2, 4)):  # two batches, as validation feeds them
        metric.update({"image": images[rows], "text": texts[rows]},
                      {"image_id": torch.tensor([0, 1, 2, 2])[rows], "caption_id": torch.tensor([0, 0, 1, 2])[rows]})
    # I0 ranks C2, C0, C1: its caption second. I1 ranks C0 first, I2 ranks C1 first.
    # C0 ranks I1 first, C1 ranks I2 first; C2 ranks I0, I2, I1: its image second.
    assert metric.compute() == pytest.approx({
        "i2t_recall@1": 2 / 3, "i2t_recall@2": 1.0, "i2t_recall@5": 1.0,
        "t2i_recall@1": 2 / 3, "t2i_recall@2": 1.0, "t2i_recall@5": 1.0})


def test_short_training_on_digits_learns_retrieval_and_zero_shot(tmp_path):
    """clip_digits.yaml: a small CLIP from scratch, 5 epochs on 1,437 real digits, validated on 360."""
    from transformers import AutoProcessor, CLIPModel

    from accel_train.tasks.clip_digits import digits_pairs

    out = tmp_path / "clip"
    assert cli_main(["train", "--config", str(REPO / "examples/configs/clip_digits.yaml"), "--num-threads", "1",
                     "--output-dir", str(out), "--progress", "false"]) == 0
    val = read_summary(out)["final_val"]
    assert val["samples"] == 360
    # chance: 0.1 for recall@1 and zero-shot (1 of 10 distinct captions), 0.5 for recall@5
    assert val["i2t_recall@1"] >= 0.8 and val["zero_shot_accuracy"] >= 0.8 and val["i2t_recall@5"] >= 0.98
    assert val["t2i_recall@1"] >= 0.8 and val["i2t_recall@10"] == 1.0

    # the exported model and processor reload with transformers and classify the digits as validation said
    model, processor = CLIPModel.from_pretrained(out / "model").eval(), AutoProcessor.from_pretrained(out / "model")
    _, pairs = digits_pairs(0.2, seed=0)
    images = processor(images=[pairs[i]["image"] for i in range(len(pairs))], return_tensors="pt")
    prompts = processor(text=CAPTIONS, padding=True, return_tensors="pt")
    with torch.no_grad():
        image_embeds = F.normalize(model.get_image_features(**images).pooler_output, dim=-1)
        text_embeds = F.normalize(model.get_text_features(**prompts).pooler_output, dim=-1)
    predicted = (image_embeds @ text_embeds.T).argmax(1)
    accuracy = (predicted == torch.tensor(pairs.labels)).sum().item() / len(pairs)
    assert accuracy == pytest.approx(val["zero_shot_accuracy"], abs=1e-9)
