"""The batch dispatch and per-sample losses, and first-batch checks that turn mistakes into messages."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from accel_train import Task, UserError


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 4), nn.Linear(2, 4)

    def forward(self, x, z):
        return self.a(x) + self.b(z)


class HFStyle(nn.Module):
    """Returns an object with .loss and .logits, like a transformers model given labels."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)

    def forward(self, inputs, labels=None):
        logits = self.lin(inputs)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(logits, labels)
        return out


def test_three_batch_shapes():
    torch.manual_seed(0)
    x, y = torch.randn(5, 3), torch.tensor([0, 1, 2, 3, 0])
    linear = nn.Linear(3, 4)
    out = Task("cross_entropy")(linear, (x, y))
    assert out.losses.shape == (5,)
    torch.testing.assert_close(out.losses, nn.functional.cross_entropy(linear(x), y, reduction="none"))

    two = TwoInputs()
    z = torch.randn(5, 2)
    out = Task("cross_entropy")(two, ((x, z), y))
    torch.testing.assert_close(out.predictions, two(x, z))

    hf = HFStyle()
    labels = torch.tensor([0, 1, 1, 0, 1])
    out = Task(loss=None)(hf, {"inputs": x, "labels": labels})
    expected = nn.functional.cross_entropy(hf.lin(x), labels)
    torch.testing.assert_close(out.losses, expected.expand(5))  # the model's mean loss, for each sample
    out = Task("cross_entropy")(hf, {"inputs": x, "labels": labels})  # our loss on the logits, labels not passed
    torch.testing.assert_close(out.losses.mean(), expected)


def test_custom_losses_scalar_or_per_sample():
    x, y = torch.randn(4, 3), torch.randn(4)
    model = nn.Linear(3, 1)
    mean = Task(lambda out, t: ((out.squeeze(1) - t) ** 2).mean(), metrics=["mse"])(model, (x, y))
    per = Task(lambda out, t: (out.squeeze(1) - t) ** 2, metrics=["mse"])(model, (x, y))
    torch.testing.assert_close(mean.total()[0], per.total()[0])
    with pytest.raises(UserError, match=r"scalar or one value per sample.*\[4, 4\]"):
        Task(lambda out, t: out - t, metrics=[])(model, (x, y))


def test_model_that_cannot_take_the_batch_reports_shapes():
    with pytest.raises(UserError, match=r"cannot take this batch \(float32\[6, 5\], int64\[6\]\).*mat1"):
        Task()(nn.Linear(3, 2), (torch.randn(6, 5), torch.zeros(6, dtype=torch.long)))


def test_labels_outside_num_classes():
    with pytest.raises(UserError, match=r"label 7 is outside \[0, 4\)"):
        Task()(nn.Linear(3, 4), (torch.randn(3, 3), torch.tensor([0, 7, 1])))
    task = Task()
    task(nn.Linear(3, 4), (torch.randn(3, 3), torch.tensor([0, 1, 1])))  # first batch fine
    with pytest.raises(UserError, match=r"label -1 is outside"):  # a later batch: caught when CE fails
        task(nn.Linear(3, 4), (torch.randn(3, 3), torch.tensor([0, -1, 1])))
    with pytest.raises(UserError, match="integer class labels"):
        Task()(nn.Linear(3, 4), (torch.randn(3, 3), torch.tensor([0.0, 1.0, 1.0])))


def test_bad_batch_shape_and_unknown_loss():
    with pytest.raises(UserError, match="a batch must be"):
        Task()(nn.Linear(3, 2), (torch.randn(2, 3),))
    with pytest.raises(UserError, match="Did you mean `cross_entropy`"):
        Task("cross_entropi")
    with pytest.raises(UserError, match="no `loss`"):
        Task(loss=None)(HFStyle(), {"inputs": torch.randn(2, 3)})


def test_fit_trains_a_copy_and_leaves_the_given_task_as_it_was(tmp_path):
    from torch.utils.data import TensorDataset

    from accel_train import TrainConfig, fit

    task = Task("cross_entropy", ["accuracy"])
    data = TensorDataset(torch.randn(16, 4), torch.arange(16) % 3)
    for run in ("a", "b"):  # twice: the second run checks its first batch again
        fit(torch.nn.Linear(4, 3), data, task=task, config=TrainConfig(epochs=1, batch_size=8, progress=False,
                                                                        output_dir=str(tmp_path / run)))
        assert task.checked is False and task.dataset_labels is None
    with pytest.raises(UserError, match="label 2 is outside"):
        fit(torch.nn.Linear(4, 2), data, task=task, config=TrainConfig(epochs=1, progress=False,
                                                                        output_dir=str(tmp_path / "c")))
