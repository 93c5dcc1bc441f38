"""What a worker process does with one architecture: build it, train it, score it.

These are the jobs a search submits to an evaluator; they take and return plain data only,
so they run the same in a local worker process or on a remote one. The grammar and dataset
are loaded once per worker process and kept.
"""

from __future__ import annotations

import functools
import time
from typing import Any


@functools.lru_cache(maxsize=4)
def _grammar(path: str):
    import einc

    return einc.load(path)


def _model(arch: str, grammar: str, input_shape: tuple[int, ...], num_classes: int, compile_model: bool):
    import einc

    g = _grammar(grammar)
    model = einc.build(g.parse(arch, input_shape), input_shape=input_shape, num_classes=num_classes)
    if compile_model:
        import torch

        model = torch.compile(model)
    return model


def _forget_generated_code() -> None:
    """torch.fx registers each GraphModule's source in linecache and never drops it; a worker
    that builds thousands of candidates over days would keep all of it."""
    import linecache

    for key in [k for k in linecache.cache if k.startswith("<eval_with_key>")]:
        del linecache.cache[key]


def evaluate(arch: str, grammar: str, data: str, data_seed: int, train: dict[str, Any], device: str | None,
             compile_model: bool = False) -> dict[str, Any]:
    """Train ``arch`` on the train split and score it on the validation split."""
    from .train import train_and_score

    return _run(train_and_score, arch, grammar, data, data_seed, train, device, compile_model)


def final_test(arch: str, grammar: str, data: str, data_seed: int, train: dict[str, Any], device: str | None,
               compile_model: bool = False) -> dict[str, Any]:
    """Retrain ``arch`` on train + validation and score it on the test split (paper B.1)."""
    from .train import retrain_and_test

    return _run(retrain_and_test, arch, grammar, data, data_seed, train, device, compile_model)


def _run(fit, arch, grammar, data, data_seed, train, device, compile_model) -> dict[str, Any]:
    import torch

    from .data import load_data_cached
    from .train import TrainConfig, pick_device

    t0 = time.perf_counter()
    ds = load_data_cached(data, data_seed)
    torch.manual_seed(train.get("seed", 0))
    model = _model(arch, grammar, ds.input_shape, ds.num_classes, compile_model)
    t1 = time.perf_counter()
    try:
        metrics = fit(model, ds, TrainConfig(**train), pick_device(device))
    finally:
        _forget_generated_code()
    return {"metrics": metrics, "timing": {"build": t1 - t0, "train": time.perf_counter() - t1}}
