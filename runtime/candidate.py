"""What a worker process does with one architecture: build it, train it, score it.

These are the jobs a search submits to an evaluator; they take and return plain data only
(``data`` may also be a loaded ``Dataset`` and ``grammar`` a compiled ``einc.Grammar``, for
backends that ship them once, such as Ray), so
they run the same in a local worker process or on a remote one. The grammar and dataset are
loaded once per worker process and kept.
"""

from __future__ import annotations

import functools
import os
import time
from typing import Any


def load_grammar(path: str, plugins: tuple[str, ...] = ()):
    """A search's grammar, with the operations of its plugin files (a worker loads them itself)."""
    import einc
    from einc.plugins import library

    return einc.load(path, library(plugins))


@functools.lru_cache(maxsize=4)
def cached_grammar(path: str, plugins: tuple[str, ...] = ()):
    """``load_grammar``, once per process: a worker's jobs, and the search itself (the copy a --ray
    evaluator ships), share one compiled grammar."""
    return load_grammar(path, tuple(plugins))


def cached_dataset(data: Any, data_seed: int, task: str | None = None, metric: str | None = None):
    """The search's dataset as the task ``task`` scored by ``metric`` (None: inferred; runtime/task.py)."""
    from .data import load_data_cached

    if isinstance(data, str):
        return load_data_cached(data, data_seed, task=task, metric=metric)
    return data.with_task(task, metric)


def _device(requested: str | None) -> str:
    """The device for this worker: with several GPUs and no explicit index, worker k takes GPU k mod n."""
    from .train import pick_device

    device = pick_device(requested)
    if device == "cuda":
        import torch

        count = torch.cuda.device_count()
        worker = os.environ.get("EINC_WORKER", "0")
        if count > 1 and worker.isdigit():
            device = f"cuda:{int(worker) % count}"
    return device


def prepare(grammar: str, plugins: tuple[str, ...], data: Any, data_seed: int, device: str | None,
            compile_model: bool = False, workers: int = 1, task: str | None = None, metric: str | None = None) -> None:
    """Run once as a worker starts: imports, CUDA start, grammar, data on the device, so its first job
    starts at once. Workers sharing a GPU each get an equal share of its memory, so one greedy
    candidate runs out of memory alone instead of taking its neighbours down."""
    from .train import limit_memory, warm_up

    cached_grammar(grammar, tuple(plugins))
    dev = _device(device)
    if dev.startswith("cuda"):
        import torch

        sharing = -(-workers // max(1, torch.cuda.device_count()))
        if sharing > 1:
            limit_memory(0.95 / sharing, dev)
    warm_up(dev, cached_dataset(data, data_seed, task, metric), compile_model=compile_model)


def _model(arch: str, grammar: Any, plugins: tuple[str, ...], input_shape: tuple[int, ...],
           output_shape: tuple[int, ...], compile_model: bool):
    import einc

    # a path or bundled name is loaded once per process; a compiled Grammar (from a remote backend) is used as is
    g = cached_grammar(grammar, tuple(plugins)) if isinstance(grammar, str) else grammar
    parsed = g.parse(arch, input_shape)
    model: Any = einc.build(parsed, input_shape=input_shape, output_shape=output_shape)  # the task's head
    if compile_model:
        import torch

        model = torch.compile(model)
    return model, parsed.infer(input_shape).flops


def _forget_generated_code() -> None:
    """torch.fx registers each GraphModule's source in linecache and never drops it; a worker
    that builds thousands of candidates over days would keep all of it."""
    import linecache

    for key in [k for k in linecache.cache if k.startswith("<eval_with_key>")]:
        del linecache.cache[key]


def evaluate(arch: str, grammar: str, data: Any, data_seed: int, train: dict[str, Any], device: str | None,
             compile_model: bool = False, plugins: tuple[str, ...] = (), task: str | None = None,
             metric: str | None = None) -> dict[str, Any]:
    """Train ``arch`` on the train split and score it on the validation split."""
    from .train import train_and_score

    return _run(train_and_score, arch, grammar, plugins, cached_dataset(data, data_seed, task, metric), train, device,
                compile_model)


def final_test(arch: str, grammar: str, data: Any, data_seed: int, train: dict[str, Any], device: str | None,
               compile_model: bool = False, plugins: tuple[str, ...] = (), task: str | None = None,
               metric: str | None = None) -> dict[str, Any]:
    """Retrain ``arch`` on train + validation and score it on the test split (paper B.1)."""
    from .train import retrain_and_test

    return _run(retrain_and_test, arch, grammar, plugins, cached_dataset(data, data_seed, task, metric), train, device,
                compile_model)


def _run(fit, arch, grammar, plugins, ds, train, device, compile_model) -> dict[str, Any]:
    import torch

    from .train import TrainConfig

    t0 = time.perf_counter()
    torch.manual_seed(train.get("seed", 0))
    model, flops = _model(arch, grammar, plugins, ds.input_shape, ds.output_shape, compile_model)
    t1 = time.perf_counter()
    try:
        metrics = fit(model, ds, TrainConfig(**train), _device(device), flops=flops)
    finally:
        _forget_generated_code()
    return {"metrics": metrics, "timing": {"build": t1 - t0, "train": time.perf_counter() - t1}}


@functools.lru_cache(maxsize=4)
def _objective(blob: bytes):
    """A shipped objective (runtime/objective.py), unpickled once per worker process."""
    from .objective import unship

    return unship(blob)


def prepare_objective(grammar: str, plugins: tuple[str, ...], data: Any, data_seed: int, objective: bytes,
                      task: str | None = None, metric: str | None = None) -> None:
    """Run once as a worker of a user-objective search starts: grammar, data and the objective
    itself (its imports), so that a function that cannot load here fails every job saying why."""
    cached_grammar(grammar, tuple(plugins))
    if data is not None:
        cached_dataset(data, data_seed, task, metric)
    _objective(objective)


def evaluate_objective(arch: str, grammar: Any, plugins: tuple[str, ...], objective: bytes,
                       input_shape: tuple[int, ...], data: Any, data_seed: int, device: str | None, seed: int,
                       epochs: int, time_limit: float | None, folder: str, index: int, task: str | None = None,
                       metric: str | None = None) -> dict[str, Any]:
    """Score ``arch`` with the user's ``objective(arch, ctx)`` (runtime/objective.py); its score is
    ``metrics["score"]``. ``timing["train"]`` is the time the function took."""
    from pathlib import Path

    from .objective import Context, metrics

    t0 = time.perf_counter()
    g = cached_grammar(grammar, tuple(plugins)) if isinstance(grammar, str) else grammar
    shape = tuple(input_shape)
    parsed = g.parse(arch, shape)
    fn = _objective(objective)
    ds = None if data is None else cached_dataset(data, data_seed, task, metric)  # as its task (--task, --metric)
    where = Path(folder)
    where.mkdir(parents=True, exist_ok=True)
    ctx = Context(input_shape=shape, seed=seed, device=_device(device), epochs=epochs, time_limit=time_limit,
                  data=ds, folder=where, index=index)
    t1 = time.perf_counter()
    try:
        value = fn(parsed, ctx)
    finally:
        _forget_generated_code()
    return {"metrics": metrics(value), "timing": {"build": t1 - t0, "train": time.perf_counter() - t1}}
