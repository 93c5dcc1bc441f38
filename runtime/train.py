"""Train and score one candidate network with the paper's recipe (4.1, B.1, Table 4).

SGD (momentum 0.9, no Nesterov), cosine learning rate over all steps, cross-entropy, no
augmentation. Datasets are small, so each split is moved to the device once as a tensor and
batches are cut by indexing: no DataLoader, no worker processes. Failures a search should record
rather than crash on are ``TrainError`` subclasses (``NonFiniteLoss``, ``TimeLimitExceeded``).

The model's initial weights are the caller's: seed (``torch.manual_seed``) before building it.
Here ``config.seed`` fixes the batch order and any randomness inside the forward pass (dropout).

    >>> scores = train_and_score(model, load_data("digits"), TrainConfig(epochs=1), pick_device(None))
    >>> sorted(scores)
    ['epochs', 'train_loss', 'val_acc']
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from einc.errors import EinError

from .data import Dataset


class TrainError(EinError):
    """A candidate could not be trained; the search records it as a failed evaluation."""


class NonFiniteLoss(TrainError):
    """The training loss became NaN or inf (the network diverged)."""


class TimeLimitExceeded(TrainError):
    """Training took longer than ``TrainConfig.time_limit`` seconds."""


@dataclass
class TrainConfig:
    """Defaults are the Unseen-NAS search settings of the paper's Table 4 (64 epochs to retrain)."""

    epochs: int = 8
    lr: float = 0.04
    weight_decay: float = 3e-4
    momentum: float = 0.9
    batch_size: int = 256
    amp: bool = False            # bfloat16 autocast on CUDA (float16 + loss scaling where bf16 is missing)
    time_limit: float | None = None  # seconds for the whole call, data transfer included
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or not self.lr > 0:
            raise TrainError(f"bad training settings: epochs={self.epochs}, batch_size={self.batch_size}, "
                             f"lr={self.lr}; each must be positive")
        if self.time_limit is not None and not self.time_limit > 0:
            raise TrainError(f"bad training settings: time_limit={self.time_limit}; it must be positive")


def pick_device(requested: str | None = None) -> str:
    """``requested`` if given (e.g. "cpu", "cuda:1"); for None or "auto": "cuda" if available, else "cpu"."""
    if requested and requested != "auto":
        if requested.startswith("cuda") and not torch.cuda.is_available():
            raise TrainError(f'device "{requested}" requested but CUDA is not available; use "cpu"')
        return requested
    return "cuda" if torch.cuda.is_available() else "cpu"


def train_and_score(model: nn.Module, data: Dataset, config: TrainConfig, device: str) -> dict[str, Any]:
    """Train on ``train``, then score on ``valid``: ``{"val_acc", "train_loss", "epochs"}``."""
    deadline = _deadline(config)
    x, y = _tensors(data.train_x, data.train_y, device)
    loss, epochs = _fit(model, x, y, data.num_classes, config, device, deadline)
    vx, vy = _tensors(data.valid_x, data.valid_y, device)
    acc = _accuracy(model, vx, vy, config, device, deadline)
    return {"val_acc": acc, "train_loss": loss, "epochs": epochs}


def retrain_and_test(model: nn.Module, data: Dataset, config: TrainConfig, device: str) -> dict[str, Any]:
    """Final evaluation: train on train + valid, score on test: ``{"test_acc", "train_loss", "epochs"}``."""
    deadline = _deadline(config)
    x, y = _tensors(np.concatenate([data.train_x, data.valid_x]),
                    np.concatenate([data.train_y, data.valid_y]), device)
    loss, epochs = _fit(model, x, y, data.num_classes, config, device, deadline)
    tx, ty = _tensors(data.test_x, data.test_y, device)
    acc = _accuracy(model, tx, ty, config, device, deadline)
    return {"test_acc": acc, "train_loss": loss, "epochs": epochs}


# --------------------------------------------------------------------------- internals


def _deadline(config: TrainConfig) -> float | None:
    return None if config.time_limit is None else time.monotonic() + config.time_limit


def _check_time(deadline: float | None, config: TrainConfig, done: str) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise TimeLimitExceeded(f"time limit of {config.time_limit:g}s exceeded {done}")


def _tensors(x: np.ndarray, y: np.ndarray, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.as_tensor(x, dtype=torch.float32).to(device),
            torch.as_tensor(y, dtype=torch.int64).to(device))


def _autocast(config: TrainConfig, device: str) -> tuple[Any, torch.amp.GradScaler | None]:
    if not (config.amp and device.startswith("cuda")):
        return contextlib.nullcontext, None
    if torch.cuda.is_bf16_supported():
        return (lambda: torch.autocast("cuda", dtype=torch.bfloat16)), None
    return (lambda: torch.autocast("cuda", dtype=torch.float16)), torch.amp.GradScaler("cuda")


def _starts(n: int, size: int) -> list[int]:
    starts = list(range(0, n, size))
    if n > 1 and n - starts[-1] == 1:
        starts.pop()  # a batch of one breaks BatchNorm in train mode; that sample waits for the next epoch
    return starts


def _batches(n: int, size: int, gen: torch.Generator, device: str) -> list[torch.Tensor]:
    order = torch.randperm(n, generator=gen).to(device)
    return [order[s:s + size] for s in _starts(n, size)]


def _fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, classes: int, config: TrainConfig, device: str,
         deadline: float | None) -> tuple[float, int]:
    """SGD with a per-step cosine schedule; returns (mean loss of the last epoch, epochs run)."""
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise TrainError("the model has no trainable parameters")
    opt = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay,
                          nesterov=False)
    steps = config.epochs * len(_starts(len(x), config.batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps))
    autocast, scaler = _autocast(config, device)
    # Checking the loss syncs with the GPU, so on CUDA look at a running sum only every few steps;
    # NaN and inf are sticky in a sum of non-negative losses, so none is missed.
    every = 1 if device == "cpu" else 16
    mean_loss = math.nan
    for epoch in range(config.epochs):
        total, seen = torch.zeros((), device=device), 0
        for step, idx in enumerate(_batches(len(x), config.batch_size, gen, device)):
            with autocast():
                out = model(x[idx])
                if epoch == 0 and step == 0 and tuple(out.shape) != (len(idx), classes):
                    raise TrainError(f"the model's output has shape {tuple(out.shape)}; expected "
                                     f"(batch, classes) = ({len(idx)}, {classes})")
                loss = nn.functional.cross_entropy(out.float(), y[idx])
            opt.zero_grad(set_to_none=True)
            if scaler is None:
                loss.backward()
                opt.step()
            else:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            sched.step()
            total += loss.detach() * len(idx)
            seen += len(idx)
            if step % every == 0:
                _check_loss(total, epoch, step)
            _check_time(deadline, config, f"in epoch {epoch + 1} of {config.epochs}")
        _check_loss(total, epoch, step)
        mean_loss = float(total) / max(1, seen)
    return mean_loss, config.epochs


def _check_loss(total: torch.Tensor, epoch: int, step: int) -> None:
    if not bool(torch.isfinite(total)):
        raise NonFiniteLoss(f"the training loss is not finite (epoch {epoch + 1}, by step {step + 1})")


@torch.no_grad()
def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, config: TrainConfig, device: str,
              deadline: float | None) -> float:
    model.eval()
    autocast, _ = _autocast(config, device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    for start in range(0, len(x), config.batch_size):
        with autocast():
            out = model(x[start:start + config.batch_size])
        correct += (out.argmax(dim=1) == y[start:start + config.batch_size]).sum()
        _check_time(deadline, config, "while scoring")
    return int(correct) / max(1, len(x))
