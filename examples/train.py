"""The README's script: your own model and data, trained by accel_train's loop.

    python examples/train.py                                                            # one device
    accelerate launch --config_file launch_configs/cpu_ddp.yaml examples/train.py       # 2 CPU processes, DDP
"""

import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import TensorDataset

from accel_train import TrainConfig, exit_on_user_error, fit

digits = load_digits()  # 1,797 real 8x8 images of handwritten digits, shipped with scikit-learn
images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16
labels = torch.tensor(digits.target)
train_data = TensorDataset(images[:1500], labels[:1500])
eval_data = TensorDataset(images[1500:], labels[1500:])

torch.manual_seed(0)
model = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(32 * 8 * 8, 10))
optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)

if __name__ == "__main__":
    with exit_on_user_error():  # a mistake in the config, data or model: one line and exit status 2
        summary = fit(model, train_data, eval_data, loss="cross_entropy", metrics=["accuracy"], optimizer=optimizer,
                      config=TrainConfig(name="readme", epochs=8, batch_size=32))
