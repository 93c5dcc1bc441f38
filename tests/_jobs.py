"""Top-level job functions for test_workers and test_cluster: workers import this module by name to unpickle them."""

from __future__ import annotations

import os
import signal
import time

import numpy as np


def square(x: int) -> dict:
    return {"y": x * x, "pid": os.getpid()}


def pid() -> dict:
    return {"pid": os.getpid()}


def started_as() -> dict:
    """How this worker process began: what it had imported before any job, and its parent."""
    import sys

    return {"torch": "torch" in sys.modules, "parent": os.getppid()}


def numpy_result() -> dict:
    return {"acc": np.float32(0.5), "n": np.int64(3)}


def not_a_dict() -> list:
    return [1, 2]


def boom(message: str = "bad candidate") -> dict:
    raise ValueError(message)


def sleep(seconds: float) -> dict:
    time.sleep(seconds)
    return {"slept": seconds}


def wait_for(path: str, timeout: float = 120.0) -> dict:
    """Run until `path` exists: the test decides when the job ends, so load cannot end it early."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.05)
    return {"pid": os.getpid()}


def hard_exit(code: int = 3) -> dict:
    os._exit(code)


def exit_leaving_a_child(code: int = 4) -> dict:
    """Die while a forked child (alive a few seconds) still holds this worker's end of the pipe."""
    if os.fork() == 0:
        time.sleep(3)
        os._exit(0)
    os._exit(code)


def self_kill() -> dict:
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(10)
    return {}


def train_tiny(seed: int) -> dict:
    """The real use: build a model in the worker, train it with einc.runtime.train, return its scores."""
    import torch
    from torch import nn

    from einc.runtime.data import Dataset
    from einc.runtime.train import TrainConfig, train_and_score

    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=64)
    x = (rng.normal(size=(64, 1, 2, 2)) + (2 * y - 1)[:, None, None, None]).astype(np.float32)
    data = Dataset("blobs", x[:48], y[:48], x[48:], y[48:], x[48:], y[48:], num_classes=2,
                   input_shape=(1, 2, 2))
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    return {**train_and_score(model, data, TrainConfig(epochs=1, batch_size=16), "cpu"),
            "threads": torch.get_num_threads()}
