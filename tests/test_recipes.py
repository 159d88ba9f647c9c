"""The recipes in one process, each with the number that shows its effect: label smoothing and class weights equal
torch's loss, mixup targets sum to 1, layer-wise LR decay follows its formula, warm restarts and warmup-stable-decay
hit their LRs and resume exactly; and each refuses, in one line, where it cannot apply."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import TensorDataset

from accel_train import Task, TrainConfig, UserError, fit, read_metrics, read_summary
from accel_train.optim import build_optimizer, build_scheduler
from accel_train.recipes import MixingTask, build_mix, class_weights, for_run
from accel_train.task import CrossEntropy

QUIET = dict(progress=False, num_threads=1)


@pytest.mark.parametrize("smoothing,weight", [(0.1, None), (0.0, [1.0, 3.0, 0.5, 2.0]), (0.2, [1.0, 3.0, 0.5, 2.0])])
def test_smoothed_and_weighted_cross_entropy_equal_torch(smoothing, weight):
    """Summed per-sample losses over summed units == F.cross_entropy(weight=..., label_smoothing=...) on a batch."""
    torch.manual_seed(0)
    logits, labels = torch.randn(16, 4), torch.randint(0, 4, (16,))
    weight = None if weight is None else torch.tensor(weight)
    out = Task(CrossEntropy(smoothing, weight), ()).losses(logits, labels)
    loss, units = out.total()
    expected = F.cross_entropy(logits, labels, weight=weight, label_smoothing=smoothing)
    torch.testing.assert_close(loss / units, expected, rtol=1e-6, atol=0)
    if weight is not None:  # the units are the samples' weights
        assert float(units) == pytest.approx(float(weight[labels].sum()))
        assert float(loss / units) != pytest.approx(float(F.cross_entropy(logits, labels)), abs=1e-3)


def test_class_weights_auto_and_given():
    labels = torch.tensor([0, 0, 0, 1, 2, 2])  # balanced: 6 / (3 x n_c) = 2/3, 2, 1 -> scaled to a smallest 1
    assert class_weights("auto", labels, 4).tolist() == pytest.approx([1.0, 3.0, 1.5, 0.0])
    assert class_weights("2,5,1", None, None).tolist() == [2.0, 5.0, 1.0]
    assert class_weights([0.5, 0.25], None, None).tolist() == [2.0, 1.0]
    with pytest.raises(UserError, match=r"^--class-weights must be `auto` or numbers like 1,2.5,1 \(got 'a,b'\)\.$"):
        class_weights("a,b", None, None)
    with pytest.raises(UserError, match=r"^--class-weights auto needs the training labels"):
        class_weights("auto", None, 3)


def test_class_weights_stay_the_weighted_mean_across_an_accumulation_window(tmp_path):
    """10 samples, batches of 3 (the last one short), one window of 4 micro-batches: one SGD step == one step on
    torch's weighted mean over the 10, and the epoch's loss is that mean."""
    torch.manual_seed(0)
    x, y = torch.randn(10, 5), torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 2, 2])
    model = nn.Linear(5, 3)
    reference = nn.Linear(5, 3)
    reference.load_state_dict(model.state_dict())
    cfg = TrainConfig(optimizer="sgd", lr=0.5, momentum=0.0, batch_size=3, grad_accum=4, max_steps=1,
                      class_weights="auto", output_dir=str(tmp_path / "run"), **QUIET)
    fit(model, TensorDataset(x, y), config=cfg, metrics=())
    weight = torch.tensor([1.0, 3.0, 3.0])  # auto: 10 / (3 x (6, 2, 2)), scaled
    loss = F.cross_entropy(reference(x), y, weight=weight)
    loss.backward()
    trained = load_file(tmp_path / "run" / "model.safetensors")
    for name, param in reference.named_parameters():
        torch.testing.assert_close(trained[name], param.detach() - 0.5 * param.grad, rtol=0, atol=1e-6)
    assert read_summary(tmp_path / "run")["final_train"]["loss"] == pytest.approx(loss.item(), abs=1e-6)


@pytest.mark.parametrize("mixup,cutmix", [(0.4, 0.0), (0.0, 1.0)])
def test_mixed_targets_sum_to_one_and_metrics_read_the_dominant_label(mixup, cutmix):
    torch.manual_seed(0)
    images, labels = torch.rand(8, 1, 8, 8), torch.tensor([0, 1, 2, 3, 4, 5, 6, 7])
    mixed, targets = build_mix(TrainConfig(mixup_alpha=mixup, cutmix_alpha=cutmix), 10)(images, labels)
    assert targets.shape == (8, 10) and torch.allclose(targets.sum(1), torch.ones(8))
    share = targets[torch.arange(8), labels]  # each image keeps this share of itself, the rest is its neighbour's
    assert torch.allclose(targets[torch.arange(8), labels.roll(1)], 1 - share)
    if mixup:
        torch.testing.assert_close(mixed, share[0] * images + (1 - share[0]) * images.roll(1, 0))
    else:
        assert ((mixed == images).float().mean(dim=(1, 2, 3)) >= share - 1e-6).all()
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    task = MixingTask(Task("cross_entropy", ["accuracy"]).for_run(), lambda x, y: (mixed, targets))
    out = task(model.train(), (images, labels))
    assert torch.equal(out.targets, targets.argmax(1))  # accuracy against each mixed image's dominant label
    expected = -(targets * F.log_softmax(model(mixed), 1)).sum(1)
    torch.testing.assert_close(out.losses, expected)
    assert torch.equal(task(model.eval(), (images, labels)).targets, labels)  # validation: the data as it is


def test_layer_decay_lrs_equal_the_formula_for_bert_and_clip():
    """BERT: embeddings lr * d^(L+1), layer i lr * d^(L-i), pooler and classifier lr; CLIP: each tower its own L."""
    from transformers import BertConfig, BertForSequenceClassification, CLIPConfig, CLIPModel

    bert = BertForSequenceClassification(BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=3,
                                                    num_attention_heads=2, intermediate_size=32, num_labels=3))
    clip = CLIPModel(CLIPConfig(
        text_config=dict(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=16, bos_token_id=0, eos_token_id=1),
        vision_config=dict(hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=32,
                           image_size=8, patch_size=4), projection_dim=8))

    def expected(name: str) -> int:
        for tower, layers in (("bert.", 3), ("text_model.", 2), ("vision_model.", 4)):
            if name.startswith(tower):
                if ".layer." in name or ".layers." in name:
                    return layers - int(name.split(".layer.")[-1].split(".layers.")[-1].split(".")[0])
                if "embeddings" in name or "pre_layrnorm" in name:
                    return layers + 1
        return 0

    for model in (bert, clip):
        cfg = TrainConfig(lr=2e-3, layer_lr_decay=0.8, weight_decay=0.01, scheduler="cosine_warmup", warmup_steps=2)
        optimizer = build_optimizer(cfg, model)
        scheduler = build_scheduler(cfg, optimizer, 10)
        for _ in range(3):
            optimizer.step()
            scheduler.step()
        factor = scheduler.get_last_lr()[0] / optimizer.param_groups[0]["initial_lr"]  # the schedule's, at step 3
        lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
        names = dict(model.named_parameters())
        assert len(lr_of) == len(names)
        for name, param in names.items():
            assert lr_of[id(param)] == pytest.approx(2e-3 * factor * 0.8 ** expected(name), rel=1e-12), name
        assert {expected(n) for n in names} == ({0, 1, 2, 3, 4} if model is bert else {0, 1, 2, 3, 4, 5})


def test_every_group_lr_is_logged_with_layer_decay(tmp_path):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2,
                                                     num_attention_heads=2, intermediate_size=32, num_labels=2))
    data = [{"input_ids": torch.randint(0, 64, (6,)), "labels": torch.tensor(i % 2)} for i in range(8)]
    cfg = TrainConfig(lr=1e-3, layer_lr_decay=0.5, batch_size=4, max_steps=2, log_every=1,
                      output_dir=str(tmp_path / "run"), **QUIET)
    fit(model, data, config=cfg, metrics=())
    step = [row for row in read_metrics(tmp_path / "run") if row["kind"] == "step"][-1]
    # head, layer 1, layer 0, embeddings: each a group with weight decay and one without
    assert [step["lr"], *(step[f"lr_group_{i}"] for i in range(1, 8))] == pytest.approx(
        [1e-3, 1e-3, 5e-4, 5e-4, 2.5e-4, 2.5e-4, 1.25e-4, 1.25e-4])
    assert "lr_group_8" not in step


def _lrs(cfg: TrainConfig, steps: int, resume_at: int | None = None) -> list[float]:
    """The LR at each of `steps` optimizer steps and after the last; with `resume_at`, optimizer and schedule
    rebuilt there from their state dicts."""
    model = nn.Linear(2, 2)
    optimizer = build_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer, steps)
    lrs = []
    for step in range(steps):
        if step == resume_at:
            saved = optimizer.state_dict(), scheduler.state_dict()
            optimizer = build_optimizer(cfg, model)
            scheduler = build_scheduler(cfg, optimizer, steps)
            optimizer.load_state_dict(saved[0])
            scheduler.load_state_dict(saved[1])
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs + [optimizer.param_groups[0]["lr"]]


def test_cosine_restarts_hit_the_peak_at_each_restart_and_resume_exactly():
    cfg = TrainConfig(lr=1.0, scheduler="cosine_restarts", restart_every=4, restart_mult=2, min_lr=0.1)
    lrs = _lrs(cfg, 30)
    assert [lrs[s] for s in (0, 4, 12, 28)] == [1.0, 1.0, 1.0, 1.0]  # restarts after 4, 8, 16 optimizer steps
    assert [lrs[s] for s in (3, 11, 27)] == pytest.approx(
        [0.1 + 0.45 * (1 + math.cos(math.pi * (n - 1) / n)) for n in (4, 8, 16)])
    assert all(lrs[s] < lrs[s - 1] for s in range(1, 30) if s not in (4, 12, 28))
    assert _lrs(cfg, 30, resume_at=7) == lrs and _lrs(cfg, 30, resume_at=12) == lrs


def test_warmup_stable_decay_phases_and_exact_resume():
    cfg = TrainConfig(lr=2.0, scheduler="wsd", warmup_steps=4, decay_steps=5, min_lr=0.2)
    lrs = _lrs(cfg, 20)
    assert lrs[:5] == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0])  # warm-up
    assert lrs[4:16] == [2.0] * 12  # stable until the last 5 steps of 20
    assert lrs[15:] == pytest.approx([2.0, 1.64, 1.28, 0.92, 0.56, 0.2])  # linear decay to min_lr at step 20
    assert _lrs(cfg, 20, resume_at=10) == lrs and _lrs(cfg, 20, resume_at=17) == lrs


def test_recipes_refuse_where_they_cannot_apply():
    cnn = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(72, 10))
    cases = [
        (TrainConfig(label_smoothing=0.1), Task("mse"), cnn, None,
         "--label-smoothing and --class-weights apply to the cross_entropy loss"),
        (TrainConfig(mixup_alpha=0.2), Task("bce_with_logits"), cnn, None, "mixup and CutMix need the cross_entropy"),
        (TrainConfig(layer_lr_decay=0.9), Task(), cnn, None, "--layer-lr-decay needs a transformer with numbered "
         "layers (encoder.layer.N, encoder.layers.N, h.N); Sequential has none. Drop --layer-lr-decay."),
        (TrainConfig(layer_lr_decay=0.9), Task(), cnn, torch.optim.SGD(cnn.parameters(), lr=0.1),
         "--layer-lr-decay builds the optimizer's groups"),
        (TrainConfig(eval_ema=True), Task(), cnn, None, "--eval-ema needs an EMA of the weights"),
    ]
    for cfg, task, model, optimizer, message in cases:
        with pytest.raises(UserError) as error:
            for_run(cfg, task.for_run(), model, optimizer)
        assert str(error.value).startswith(message)
    with pytest.raises(UserError, match=r"^--scheduler cosine_restarts needs --restart-every N"):
        TrainConfig(scheduler="cosine_restarts")
    with pytest.raises(UserError, match=r"^label_smoothing must lie in \[0.0, 1.0\] \(got 1.5\)"):
        TrainConfig(label_smoothing=1.5)
    text = MixingTask(Task().for_run(), build_mix(TrainConfig(mixup_alpha=0.2), 2))
    with pytest.raises(UserError, match=r"^mixup and CutMix mix image batches"):
        text(nn.Linear(3, 2).train(), {"input_ids": torch.ones(2, 3), "labels": torch.tensor([0, 1])})


def test_mixup_and_cutmix_resume_exactly(tmp_path):
    """Their random draws come from the RNG the checkpoint saves: stopped after step 5 and resumed, every logged loss
    and the final weights are the uninterrupted run's, bitwise."""
    def run(out, **extra):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 10))
        generator = torch.Generator().manual_seed(0)
        data = TensorDataset(torch.rand(48, 1, 8, 8, generator=generator), torch.randint(0, 10, (48,), generator=generator))
        cfg = TrainConfig(batch_size=8, epochs=2, mixup_alpha=0.4, cutmix_alpha=1.0, mix_prob=0.7, log_every=1,
                          output_dir=str(out), **QUIET, **extra)
        return fit(model, data, config=cfg)

    run(tmp_path / "full")
    assert run(tmp_path / "parts", stop_at_step=5)["stopped"]
    run(tmp_path / "parts", resume="auto")
    losses = [[row["train/loss"] for row in read_metrics(tmp_path / name) if row["kind"] == "step"]
              for name in ("full", "parts")]
    assert len(losses[0]) == 12 and losses[0] == losses[1]
    full, parts = (load_file(tmp_path / name / "model.safetensors") for name in ("full", "parts"))
    assert all(torch.equal(full[k], parts[k]) for k in full)
