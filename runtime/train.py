"""Train and score one candidate network with the paper's recipe (4.1, B.1, Table 4).

SGD (momentum 0.9, no Nesterov), cosine learning rate over all steps, the loss of the dataset's
task (cross-entropy for classification; runtime/task.py), no augmentation. The validation (test)
metric is the task's, computed over the whole split, under its journal key (``val_acc``,
``val_rel_l2``, ...). Datasets are small, so each split is moved to the device once per process (cached
while the ``Dataset`` lives) and batches are cut by indexing: no DataLoader, no worker processes.
Failures a search should record rather than crash on are ``TrainError`` subclasses
(``NonFiniteLoss``, ``TimeLimitExceeded``, ``OutOfMemory``).

On CUDA the step can be replayed from a CUDA graph (``TrainConfig.graphs``) and run under bf16
autocast (``TrainConfig.amp``); both default to "auto" (None) and are ignored on a CPU, where
``settings_note`` gives the one line a caller may print. The metrics say what was used:
``"amp"`` (bool) and ``"step"`` ("graph" or "eager"), plus ``"graph_error"`` when a capture failed.

The model's initial weights are the caller's: seed (``torch.manual_seed``) before building it.
Here ``config.seed`` fixes the batch order and any randomness inside the forward pass (dropout).

    >>> scores = train_and_score(model, load_data("digits"), TrainConfig(epochs=1), pick_device(None))
    >>> sorted(scores)
    ['amp', 'epochs', 'step', 'train_loss', 'val_acc']
"""

from __future__ import annotations

import contextlib
import gc
import math
import time
import traceback
import weakref
from typing import Any

import numpy as np
import torch
from torch import nn

from einc.errors import EinError

from .data import Dataset
from .task import Task
from .train_config import TrainConfig, TrainError
from .train_step import NonFiniteLoss, OutOfMemory, TimeLimitExceeded, TrainStep

# bf16 autocast pays once the tensor cores have enough work per sample. Measured on an H200
# (issue 12): slower than fp32 for small CNNs at 3x32x32 (order 1e7-1e8 FLOPs per sample), 3.3x
# faster for the ViT seed at 3x64x64 (2.4e9). The threshold sits between the two, in einc's unit
# (``arch.infer(shape).flops``: 2 per multiply-add, as torch's FlopCounterMode counts): ResNet18 at
# 3x32x32 (3.0e8) gets bf16, every candidate of the README digits search (<= 3e7) stays in fp32.
AMP_MIN_FLOPS = 250_000_000


def pick_device(requested: str | None = None) -> str:
    """``requested`` if given (e.g. "cpu", "cuda:1"); for None or "auto": "cuda" if available, else "cpu"."""
    if requested and requested != "auto":
        if requested.startswith("cuda") and not torch.cuda.is_available():
            raise TrainError(f'device "{requested}" requested but CUDA is not available; use "cpu"')
        return requested
    return "cuda" if torch.cuda.is_available() else "cpu"


# --------------------------------------------------------------------------- settings


def _is_cuda(device: str) -> bool:
    return device.split(":", maxsplit=1)[0] == "cuda"


def use_amp(amp: bool | None, device: str, flops: int | None) -> bool:
    """Whether training runs under autocast: never off CUDA; ``amp`` if set; else by FLOPs per sample."""
    if not _is_cuda(device):
        return False
    if amp is not None:
        return amp
    return flops is not None and flops >= AMP_MIN_FLOPS


def use_graphs(graphs: bool | None, device: str) -> bool:
    """Whether the training step is captured as a CUDA graph: never off CUDA; on by default on CUDA."""
    return _is_cuda(device) and graphs is not False


def settings_note(amp: bool | None, graphs: bool | None, device: str) -> str | None:
    """The one line to print when ``amp``/``graphs`` were asked for but ``device`` ignores them, else None.

        >>> settings_note(True, None, "cpu")
        'note: --amp needs a CUDA device; training on cpu in float32'
    """
    if _is_cuda(device):
        return None
    asked = [name for name, value in (("--amp", amp), ("--graphs", graphs)) if value]
    if not asked:
        return None
    what = {"--amp": "in float32", "--graphs": "step by step (no CUDA graphs)"}
    return (f"note: {' and '.join(asked)} {'needs' if len(asked) == 1 else 'need'} a CUDA device; "
            f"training on {device} " + ", ".join(what[a] for a in asked))


def count_flops(model: nn.Module, sample: torch.Tensor) -> int:
    """FLOPs of one forward pass on ``sample`` (one sample, batch axis included), 2 per multiply-add.

    Runs in eval mode without gradients, so BatchNorm statistics are left alone.
    """
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(sample)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


# --------------------------------------------------------------------------- device helpers


def warm_up(device: str | None = None, data: Dataset | None = None, compile_model: bool = False) -> float:
    """Start what a first training job would otherwise wait for; returns the seconds it took.

    A worker calls this as soon as it starts, so that importing torch, creating the CUDA context
    and loading cuBLAS/cuDNN overlap the search's own setup. With ``data``, its splits are also
    put on the device (the cache ``device_split`` reads). With ``compile_model`` (``--compile``),
    a trivial function is compiled too: the first ``torch.compile`` in a process pays seconds of
    one-time start-up (inductor's imports, its compile workers) that would otherwise land on the
    first candidate. Safe to call more than once.
    """
    t0 = time.perf_counter()
    dev = pick_device(device)
    a = torch.ones(16, 16, device=dev)
    (a @ a).sum()
    nn.functional.conv2d(torch.ones(1, 2, 4, 4, device=dev), torch.ones(2, 2, 3, 3, device=dev), padding=1)
    if _is_cuda(dev):
        if torch.cuda.is_bf16_supported():
            (a.bfloat16() @ a.bfloat16()).sum()
        torch.cuda.synchronize(dev)
    if data is not None:
        for split in ("train", "valid", "test"):
            device_split(data, split, dev)
    if compile_model:
        torch.compile(lambda t: nn.functional.leaky_relu(t, 0.01) * 2)(torch.ones(4, device=dev, requires_grad=True)) \
            .sum().backward()
    return time.perf_counter() - t0


def limit_memory(fraction: float, device: str | None = None) -> bool:
    """Cap this process's share of a GPU's memory (several candidates per GPU), so that one greedy
    candidate hits ``OutOfMemory`` instead of starving its neighbours. False (no-op) off CUDA."""
    if not 0 < fraction <= 1:
        raise TrainError(f"bad memory fraction {fraction}; it must be in (0, 1]")
    dev = pick_device(device)
    if not _is_cuda(dev):
        return False
    torch.cuda.set_per_process_memory_fraction(fraction, torch.device(dev))
    return True


# Each split's tensors on each device, kept while the Dataset object lives (a persistent worker
# keeps its datasets in ``load_data_cached``), so a worker copies a split to its GPU once.
_DEVICE_DATA: weakref.WeakKeyDictionary[Dataset, dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]]] = \
    weakref.WeakKeyDictionary()


def device_split(data: Dataset, split: str, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` of split "train", "valid" or "test" on ``device``: float32 and int64, cached per process.

    The tensors are shared across jobs: read them, never modify them.
    """
    key = (split, str(torch.device(device)))
    per = _DEVICE_DATA.setdefault(data, {})
    if key not in per:
        per[key] = _tensors(getattr(data, f"{split}_x"), getattr(data, f"{split}_y"), device)
    return per[key]


def clear_device_data() -> None:
    """Forget every cached split (frees their device memory once no job holds them)."""
    _DEVICE_DATA.clear()


# --------------------------------------------------------------------------- training


def train_and_score(model: nn.Module, data: Dataset, config: TrainConfig, device: str,
                    flops: int | None = None) -> dict[str, Any]:
    """Train on ``train``, then score on ``valid``: ``{"val_acc", "train_loss", "epochs", "amp", "step"}``,
    the metric's key being the task's (``val_rel_l2``, ``val_auroc``, ...).

    ``flops`` (per sample, e.g. ``arch.infer(shape).flops``) decides ``amp=None``; when it is not
    given and the decision needs it, the model's forward pass on one sample is counted.
    """
    with _out_of_memory(model, device):
        deadline = _deadline(config)
        x, y = device_split(data, "train", device)
        task = _task(data)
        fit = _fit(model, x, y, task, config, device, deadline, flops)
        vx, vy = device_split(data, "valid", device)
        return {task.val_key: _score(model, vx, vy, task, config, device, deadline, fit["amp"]), **fit}


def retrain_and_test(model: nn.Module, data: Dataset, config: TrainConfig, device: str,
                     flops: int | None = None) -> dict[str, Any]:
    """Final evaluation: train on train + valid, score on test: ``{"test_acc", "train_loss", "epochs", ...}``
    (the task's ``test_`` key)."""
    with _out_of_memory(model, device):
        deadline = _deadline(config)
        (tx_, ty_), (vx_, vy_) = device_split(data, "train", device), device_split(data, "valid", device)
        x, y = torch.cat([tx_, vx_]), torch.cat([ty_, vy_])
        task = _task(data)
        fit = _fit(model, x, y, task, config, device, deadline, flops)
        del x, y
        tx, ty = device_split(data, "test", device)
        return {task.test_key: _score(model, tx, ty, task, config, device, deadline, fit["amp"]), **fit}


# --------------------------------------------------------------------------- internals


def _task(data: Dataset) -> Task:
    assert data.task is not None  # a Dataset always has one
    return data.task


def _is_oom(e: BaseException) -> bool:
    if isinstance(e, torch.OutOfMemoryError):
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and ("out of memory" in text.lower() or "ALLOC_FAILED" in text
                                            or "can't allocate memory" in text)


def _free_device_memory(device: str) -> None:
    gc.collect()
    if _is_cuda(device):
        torch.cuda.empty_cache()


@contextlib.contextmanager
def _out_of_memory(model: nn.Module, device: str):
    """Turn running out of memory into ``OutOfMemory``, after freeing what the candidate held:
    the failed frames' tensors, the gradients, and the model's weights (moved back to the host)."""
    try:
        yield
    except Exception as e:
        if not _is_oom(e):
            raise
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        traceback.clear_frames(e.__traceback__)
        e.__traceback__ = None
        with contextlib.suppress(Exception):
            for p in model.parameters():
                p.grad = None
            model.to("cpu")
        _free_device_memory(device)
        raise OutOfMemory(f"out of memory on {device}: {first[:300]}; try a smaller --batch-size, "
                          "fewer candidates per device, or a lower --max-activations") from None


def _deadline(config: TrainConfig) -> float | None:
    return None if config.time_limit is None else time.monotonic() + config.time_limit


def _check_time(deadline: float | None, config: TrainConfig, done: str) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise TimeLimitExceeded(f"time limit of {config.time_limit:g}s exceeded {done}")


def _tensors(x: np.ndarray, y: np.ndarray, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    # class indices stay int64; every other task's targets are float32 (runtime/data.py)
    return (torch.as_tensor(x, dtype=torch.float32).to(device),
            torch.as_tensor(y, dtype=torch.int64 if y.dtype.kind in "iu" else torch.float32).to(device))


def _autocast(amp: bool, device: str, graphs: bool = False) -> tuple[Any, torch.amp.GradScaler | None]:
    if not (amp and _is_cuda(device)):
        return contextlib.nullcontext, None
    # A captured graph must not rely on autocast's cache of cast weights (it is cleared on exit).
    cache = not graphs
    if torch.cuda.is_bf16_supported():
        return (lambda: torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=cache)), None
    return (lambda: torch.autocast("cuda", dtype=torch.float16, cache_enabled=cache)), torch.amp.GradScaler("cuda")


def _starts(n: int, size: int) -> list[int]:
    starts = list(range(0, n, size))
    if n > 1 and n - starts[-1] == 1:
        starts.pop()  # a batch of one breaks BatchNorm in train mode; that sample waits for the next epoch
    return starts


def _batches(n: int, size: int, gen: torch.Generator, device: str) -> list[torch.Tensor]:
    order = torch.randperm(n, generator=gen).to(device)
    return [order[s:s + size] for s in _starts(n, size)]


def _fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, task: Task | int, config: TrainConfig, device: str,
         deadline: float | None, flops: int | None = None, capturer: Any = None) -> dict[str, Any]:
    """SGD with a per-step cosine schedule; returns ``{"train_loss" (mean of the last epoch), "epochs",
    "amp", "step"}`` and ``"graph_error"`` when a requested capture failed."""
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    model.to(device).train()
    if not any(p.requires_grad for p in model.parameters()):
        raise TrainError("the model has no trainable parameters")
    if flops is None and config.amp is None and _is_cuda(device):
        flops = count_flops(model, x[:1])
    amp = use_amp(config.amp, device, flops)
    graphs = use_graphs(config.graphs, device) or capturer is not None
    autocast, scaler = _autocast(amp, device, graphs)
    per_epoch = len(_starts(len(x), config.batch_size))
    step = TrainStep(model, x, y, task, lr=config.lr, momentum=config.momentum,
                     weight_decay=config.weight_decay, steps=config.epochs * per_epoch,
                     batch_size=min(config.batch_size, len(x)), device=device, autocast=autocast, scaler=scaler,
                     graphs=graphs, capturer=capturer)
    # Checking the loss syncs with the GPU, so on CUDA look at a running sum only every few steps;
    # NaN and inf are sticky in a sum of non-negative losses, so none is missed.
    every = 1 if device == "cpu" else 16
    mean_loss = math.nan
    try:
        for epoch in range(config.epochs):
            step.total.zero_()
            seen = 0
            for k, idx in enumerate(_batches(len(x), config.batch_size, gen, device)):
                step(idx)
                seen += len(idx)
                if k % every == 0:
                    _check_loss(step.total, epoch, k)
                _check_time(deadline, config, f"in epoch {epoch + 1} of {config.epochs}")
            _check_loss(step.total, epoch, k)
            mean_loss = float(step.total) / max(1, seen)
    finally:
        step.close()
    out: dict[str, Any] = {"train_loss": mean_loss, "epochs": config.epochs, "amp": amp, "step": step.mode}
    if step.graph_error:
        out["graph_error"] = step.graph_error
    return out


def _check_loss(total: torch.Tensor, epoch: int, step: int) -> None:
    if not bool(torch.isfinite(total)):
        raise NonFiniteLoss(f"the training loss is not finite (epoch {epoch + 1}, by step {step + 1})")


@torch.no_grad()
def _score(model: nn.Module, x: torch.Tensor, y: torch.Tensor, task: Task, config: TrainConfig, device: str,
           deadline: float | None, amp: bool = False) -> float:
    """The task's metric over the whole split (batches are kept, then scored together: AUROC, mAP and
    r2 are not means of per-batch values)."""
    model.eval()
    autocast, _ = _autocast(amp, device)
    kept = []
    for start in range(0, len(x), config.batch_size):
        with autocast():
            out = model(x[start:start + config.batch_size])
        kept.append(task.keep(out))
        _check_time(deadline, config, "while scoring")
    outputs = torch.cat(kept) if kept else torch.zeros((0, *task.output_shape))
    try:
        return task.score(outputs.cpu().numpy(), y.cpu().numpy())
    except EinError as e:  # a metric undefined on this split (AUROC of one class)
        raise TrainError(str(e)) from None
