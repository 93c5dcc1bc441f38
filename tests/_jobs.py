"""Top-level job functions for test_evaluate: spawn workers import this module by name to unpickle them."""

from __future__ import annotations

import os
import signal
import time

import numpy as np


def square(x: int) -> dict:
    return {"y": x * x, "pid": os.getpid()}


def pid() -> dict:
    return {"pid": os.getpid()}


def numpy_result() -> dict:
    return {"acc": np.float32(0.5), "n": np.int64(3)}


def not_a_dict() -> list:
    return [1, 2]


def boom(message: str = "bad candidate") -> dict:
    raise ValueError(message)


def sleep(seconds: float) -> dict:
    time.sleep(seconds)
    return {"slept": seconds}


def hard_exit(code: int = 3) -> dict:
    os._exit(code)


def self_kill() -> dict:
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(10)
    return {}
