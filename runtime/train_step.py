"""The training step of ``train._fit``: one SGD step, run eagerly or replayed from a CUDA graph.

All training state lives in tensors on the device and is only ever updated in place: the
parameters, the momentum buffers, BatchNorm statistics, the learning rate (a 0-d tensor that the
optimizer reads, filled from a precomputed cosine schedule by a step counter on the device), and
the running loss sum of the epoch. So one step is the same sequence of kernels whether it runs
eagerly or is replayed from a captured graph, and an eager step may run between replays.

With ``graphs``: the first ``WARMUP`` full batches run eagerly on a side stream (cuDNN/cuBLAS pick
their algorithms, lazy state is created), then one step with the full batch shape is captured and
every later full batch replays it (its indices copied into a static index tensor first). A batch
of another size (the last, partial batch of an epoch) runs eagerly: nothing is dropped. When the
capture fails the step falls back to eager for the rest of the run and keeps the reason.

The capture itself is behind ``Capturer`` so that the bookkeeping (warm-up, static indices, the
partial batch, the fallback) is tested on a CPU with a stand-in that "captures" a Python call.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .task import Task
from .train_config import TrainError

WARMUP = 3  # eager full-batch steps before capture (PyTorch's whole-network recipe uses 3)


class NonFiniteLoss(TrainError):
    """The training loss became NaN or inf (the network diverged)."""


class TimeLimitExceeded(TrainError):
    """Training took longer than ``TrainConfig.time_limit`` seconds."""


class OutOfMemory(TrainError):
    """The device ran out of memory; the candidate's tensors were freed before this was raised."""


class Capturer:
    """Captures ``fn`` (no arguments) as a CUDA graph; ``capture`` returns the replay callable.

    ``warm_up`` is the context eager warm-up steps run in (a side stream, as CUDA graph capture
    requires). ``release`` frees what a capture holds (its private memory pool).
    """

    def __init__(self, device: str) -> None:
        self.device = torch.device(device)
        self.stream = torch.cuda.Stream(device=self.device)
        self.graph: Any = None

    @contextlib.contextmanager
    def warm_up(self):
        main = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(main)
        with torch.cuda.stream(self.stream):
            yield
        main.wait_stream(self.stream)

    def capture(self, fn: Callable[[], None]) -> Callable[[], None]:
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                fn()
        except BaseException:
            del graph
            self.release()
            raise
        self.graph = graph
        return graph.replay

    def release(self) -> None:
        self.graph = None
        with contextlib.suppress(Exception):
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()


def cosine_schedule(lr: float, steps: int) -> list[float]:
    """The learning rate of each step: ``CosineAnnealingLR(T_max=steps)``'s closed form, eta_min 0."""
    t = max(1, steps)
    return [lr * (1 + math.cos(math.pi * k / t)) / 2 for k in range(max(1, steps))]


class TrainStep:
    """``step(idx)`` trains one step on ``x[idx], y[idx]`` (``idx`` an int64 tensor on the device).

    ``task`` (runtime/task.py) gives the loss and the output shape checked on the first step; an
    int is a classification task into that many classes.

    ``total`` is the sum of ``loss * batch`` since the caller last zeroed it (device tensor).
    After training, ``mode`` is "graph" when any step was replayed, else "eager";
    ``graph_error`` says why a requested capture failed (None otherwise).
    """

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, task: Task | int, *, lr: float,
                 momentum: float, weight_decay: float, steps: int, batch_size: int, device: str,
                 autocast: Callable[[], Any], scaler: Any = None, graphs: bool = False,
                 capturer: Capturer | None = None) -> None:
        self.task = task if isinstance(task, Task) else Task("classification", None, (task,))
        self.model, self.x, self.y = model, x, y
        self.device, self.batch_size = device, batch_size
        self.autocast, self.scaler = autocast, scaler
        params = [p for p in model.parameters() if p.requires_grad]
        schedule = cosine_schedule(lr, steps)
        self._schedule_host = schedule
        self._host_step = 0
        # A device-tensor learning rate read by fused SGD: no host sync, so the step can be captured.
        opt: torch.optim.Optimizer | None = None
        self.lr: torch.Tensor | None = None
        if device.split(":", maxsplit=1)[0] in ("cuda", "cpu"):
            self.lr = torch.tensor(schedule[0], dtype=torch.float32, device=device)
            self.schedule = torch.tensor(schedule, dtype=torch.float32, device=device)
            self.counter = torch.zeros(1, dtype=torch.int64, device=device)
            with contextlib.suppress(RuntimeError, ValueError, TypeError):
                opt = torch.optim.SGD(params, lr=self.lr, momentum=momentum, weight_decay=weight_decay,
                                      nesterov=False, fused=True)
        if opt is None:  # another device type: a float learning rate set from the host each step
            self.lr = None
            opt = torch.optim.SGD(params, lr=schedule[0], momentum=momentum, weight_decay=weight_decay,
                                  nesterov=False)
        self.opt: torch.optim.Optimizer = opt
        self.total = torch.zeros((), dtype=torch.float32, device=device)
        self.want_graph = bool(graphs and self.lr is not None and scaler is None)
        self.capturer = capturer if capturer is not None else (Capturer(device) if self.want_graph else None)
        self.static_idx = torch.zeros(batch_size, dtype=torch.int64, device=device)
        self.replay: Callable[[], None] | None = None
        self.graph_error: str | None = None
        self.graph_steps = self.eager_steps = 0
        self._warm = 0
        self._check_shape = True

    @property
    def mode(self) -> str:
        return "graph" if self.graph_steps else "eager"

    def __call__(self, idx: torch.Tensor) -> None:
        n = int(idx.numel())
        if self.replay is not None and n == self.batch_size:
            self.static_idx.copy_(idx)
            self.replay()
            self.graph_steps += 1
            return
        capturing_later = self.want_graph and self.replay is None and self.graph_error is None
        if capturing_later and n == self.batch_size:
            assert self.capturer is not None  # made whenever a graph is wanted
            with self.capturer.warm_up():
                self._compute(idx)
            self._warm += 1
            self.eager_steps += 1
            if self._warm >= WARMUP:
                self._capture()
            return
        if self.replay is None:
            self._compute(idx)
        else:
            # The captured graph keeps its own memory pool, so an eager step beside it (the partial
            # batch) needs memory on top; when that runs out, drop the graph and go on eagerly.
            try:
                self._compute(idx)
            except torch.OutOfMemoryError as e:
                first = (str(e).strip().splitlines() or [""])[0]
                self.graph_error = f"OutOfMemoryError beside the captured graph, continued eagerly: {first}"[:300]
            else:
                self.eager_steps += 1
                return
            self.close()
            self.opt.zero_grad(set_to_none=True)
            self._compute(idx)
        self.eager_steps += 1

    def close(self) -> None:
        """Drop the captured graph and its memory pool (the parameters stay trained)."""
        self.replay = None
        if self.capturer is not None:
            self.capturer.release()

    # ----------------------------------------------------------------------- internals

    def _capture(self) -> None:
        # Gradients set to None now are allocated from the graph's private pool by the captured
        # backward, and stay there: static addresses, as replay needs.
        self.opt.zero_grad(set_to_none=True)
        assert self.capturer is not None
        try:
            self.replay = self.capturer.capture(lambda: self._compute(self.static_idx))
        except Exception as e:  # noqa: BLE001  any failure means: stay eager
            lines = str(e).strip().splitlines()
            self.graph_error = f"{type(e).__name__}: {lines[0] if lines else ''}"[:300]
            self.replay = None
            self.opt.zero_grad(set_to_none=True)  # drop grads that may live in the abandoned pool

    def _compute(self, idx: torch.Tensor) -> None:
        """One step; only in-place updates of persistent state, so it can be captured."""
        xb, yb = self.x.index_select(0, idx), self.y.index_select(0, idx)
        self.opt.zero_grad(set_to_none=True)
        with self.autocast():
            out = self.model(xb)
            if self._check_shape:
                self._check_shape = False
                want = (int(idx.numel()), *self.task.output_shape)
                if tuple(out.shape) != want:
                    what = "(batch, classes)" if self.task.kind == "classification" else \
                        f"(batch, {self.task.kind} target)"
                    raise TrainError(f"the model's output has shape {tuple(out.shape)}; expected "
                                     f"{what} = {want}")
            loss = self.task.loss(out.float(), yb)
        if self.scaler is None:
            loss.backward()
        else:
            self.scaler.scale(loss).backward()
        # The state a step advances is touched only from here on (BatchNorm statistics aside), so a
        # step whose forward or backward pass runs out of memory can be run again.
        if self.lr is not None:
            last = len(self._schedule_host) - 1  # clamped: an index past the end is a device-side assert
            self.lr.copy_(torch.index_select(self.schedule, 0, self.counter.clamp(max=last)).view(()))
            self.counter.add_(1)
        else:
            group_lr = self._schedule_host[min(self._host_step, len(self._schedule_host) - 1)]
            for group in self.opt.param_groups:
                group["lr"] = group_lr
            self._host_step += 1
        if self.scaler is None:
            self.opt.step()
        else:
            self.scaler.step(self.opt)
            self.scaler.update()
        self.total.add_(loss.detach() * idx.numel())
