"""One candidate trained with the paper's recipe on tiny synthetic data, on the CPU."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from einc.runtime.data import Dataset
from einc.runtime.train import (NonFiniteLoss, TimeLimitExceeded, TrainConfig, TrainError, pick_device,
                                retrain_and_test, train_and_score)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny ops on a shared 2-core machine: OpenMP spin-waiting across threads costs seconds."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def blobs(n: int = 120, seed: int = 0) -> Dataset:
    """Two classes, separable by the sign of the mean pixel: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    splits = {}
    for split, size in (("train", n), ("valid", n // 4), ("test", n // 4)):
        y = rng.integers(0, 2, size=size)
        x = rng.normal(size=(size, 1, 4, 4)).astype(np.float32) + (2 * y - 1)[:, None, None, None]
        splits[split] = (x.astype(np.float32), y.astype(np.int64))
    return Dataset("blobs", *splits["train"], *splits["valid"], *splits["test"], num_classes=2,
                   input_shape=(1, 4, 4))


def tiny(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))


class Diverges(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1)) * float("nan")


def test_one_epoch_returns_scores():
    scores = train_and_score(tiny(), blobs(), TrainConfig(epochs=1, batch_size=32), "cpu")
    assert set(scores) == {"val_acc", "train_loss", "epochs"}
    assert 0.0 <= scores["val_acc"] <= 1.0 and math.isfinite(scores["train_loss"]) and scores["epochs"] == 1


def test_learns_and_is_deterministic_for_a_seed():
    config = TrainConfig(epochs=4, batch_size=16, seed=1)
    a = train_and_score(tiny(), blobs(), config, "cpu")
    b = train_and_score(tiny(), blobs(), config, "cpu")
    assert a == b
    assert a["val_acc"] > 0.8


def test_retrain_scores_on_test():
    scores = retrain_and_test(tiny(), blobs(), TrainConfig(epochs=2, batch_size=32), "cpu")
    assert set(scores) == {"test_acc", "train_loss", "epochs"} and 0.0 <= scores["test_acc"] <= 1.0


def test_a_last_batch_of_one_is_skipped_so_batchnorm_trains():
    scores = train_and_score(tiny(), blobs(n=33), TrainConfig(epochs=1, batch_size=16), "cpu")
    assert 0.0 <= scores["val_acc"] <= 1.0


def test_nan_loss_raises():
    with pytest.raises(NonFiniteLoss, match="not finite"):
        train_and_score(Diverges(), blobs(), TrainConfig(epochs=1), "cpu")


def test_time_limit_raises():
    with pytest.raises(TimeLimitExceeded, match="time limit of 1e-06s exceeded in epoch 1"):
        train_and_score(tiny(), blobs(), TrainConfig(epochs=50, batch_size=8, time_limit=1e-6), "cpu")


def test_wrong_output_shape_is_a_train_error():
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 5))
    message = r"output has shape \(120, 5\); expected \(batch, classes\) = \(120, 2\)"
    with pytest.raises(TrainError, match=message):
        train_and_score(model, blobs(), TrainConfig(epochs=1), "cpu")


def test_settings_and_devices():
    with pytest.raises(TrainError, match="epochs=0"):
        TrainConfig(epochs=0)
    assert pick_device("cpu") == "cpu"
    assert pick_device(None) == pick_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(TrainError, match="CUDA is not available"):
            pick_device("cuda")
