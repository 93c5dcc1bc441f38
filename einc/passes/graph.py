"""torch.fx helpers the passes share: reading nodes, their shapes and permutations; tidying up.

Every pass ends with ``finish`` (lint, recompile; once for the whole pipeline in ``optimize``).
Shapes come from the meta keys of einc.meta: ``FEATURE`` (what einc.lower inferred) or
``STACKED`` (a batched block's value).
"""

from __future__ import annotations

import inspect
import operator
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from ..meta import FEATURE, STACKED

__all__ = ["BINARY", "SOFTMAX", "UNARY", "bind", "call_counts", "concat_linears", "deferred", "finish", "only_user",
           "order_modules", "pair", "permutation", "rank", "shape_args", "shape_of", "stacked_parameter",
           "submodule", "swaps_last_two"]

# Weight-free, deterministic torch functions einc's lowerings call, by kind.
BINARY: frozenset[Callable[..., Any]] = frozenset({
    operator.add, operator.sub, operator.mul, operator.truediv, torch.add, torch.sub, torch.mul, torch.div,
    torch.matmul})
UNARY: frozenset[Callable[..., Any]] = frozenset({
    F.leaky_relu, F.relu, torch.relu, torch.sigmoid, torch.tanh, F.gelu, F.silu, torch.exp, torch.neg})
SOFTMAX: frozenset[Callable[..., Any]] = frozenset({
    torch.softmax, F.softmax, torch.log_softmax, F.log_softmax})


_DEFERRED: ContextVar[bool] = ContextVar("einc_finish_deferred", default=False)


def finish(gm: fx.GraphModule) -> None:
    """What every pass does last: lint the graph, regenerate ``forward``; inside ``deferred()``,
    nothing (the pipeline does both once at its end)."""
    if _DEFERRED.get():
        return
    gm.graph.lint()
    gm.recompile()


@contextmanager
def deferred() -> Iterator[None]:
    """Passes run in here leave linting and recompiling to the caller: ``optimize`` does both once.

    Recompiling generates and compiles the whole ``forward``, O(nodes) each time; after every one
    of the pipeline's eleven passes that was 90% of optimising an 8,000-op network. No pass reads
    the generated code, only the graph.
    """
    token = _DEFERRED.set(True)
    try:
        yield
    finally:
        _DEFERRED.reset(token)


def order_modules(gm: fx.GraphModule) -> None:
    """Re-register submodules in graph order, so state_dict and printing follow the network."""
    first: dict[str, int] = {}
    for n in gm.graph.nodes:
        if n.op == "call_module":
            first.setdefault(n.target, len(first))
    ordered = sorted(gm._modules.items(), key=lambda kv: first.get(kv[0], len(first)))
    gm._modules.clear()
    gm._modules.update(ordered)


def call_counts(gm: fx.GraphModule) -> dict[str, int]:
    """How many nodes call each submodule or read each attribute."""
    calls: dict[str, int] = {}
    for n in gm.graph.nodes:
        if n.op in ("call_module", "get_attr"):
            calls[n.target] = calls.get(n.target, 0) + 1
    return calls


def only_user(n: fx.Node) -> fx.Node | None:
    users = list(n.users)
    return users[0] if len(users) == 1 else None


def submodule(gm: fx.GraphModule, n: fx.Node) -> nn.Module:
    """The module a ``call_module`` node calls."""
    assert isinstance(n.target, str)
    return gm.get_submodule(n.target)


_SIGNATURES: dict[Callable[..., Any], inspect.Signature] = {}


def bind(fn: Callable[..., Any], n: fx.Node) -> dict[str, Any]:
    """``n``'s arguments by ``fn``'s parameter names, defaults filled in."""
    sig = _SIGNATURES.get(fn)
    if sig is None:
        sig = _SIGNATURES[fn] = inspect.signature(fn)
    bound = sig.bind(*n.args, **n.kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)


def pair(v: Any) -> tuple[int, int] | None:
    """A convolution-style size (``3`` or ``(3, 3)``) as a pair of ints, if it is one."""
    if type(v) is int:
        return (v, v)
    if isinstance(v, (tuple, list)) and len(v) == 2 and type(v[0]) is int and type(v[1]) is int:
        return (v[0], v[1])
    return None


def arg_key(v: Any, node: Callable[[fx.Node], Any] = lambda n: n) -> Any:
    """A hashable key for a node's argument structure, equal exactly when the arguments are;
    each node inside is keyed by ``node`` (itself, by default).

    Constants carry their type: 1, 1.0 and True are different arguments to torch.
    """
    if isinstance(v, fx.Node):
        return node(v)
    if isinstance(v, (list, tuple)):
        return (type(v).__name__, tuple(arg_key(e, node) for e in v))
    if isinstance(v, dict):
        return ("dict", tuple((k, arg_key(e, node)) for k, e in v.items()))
    if isinstance(v, slice):
        return ("slice", arg_key(v.start, node), arg_key(v.stop, node), arg_key(v.step, node))
    return (type(v).__name__, v)


def shape_args(args: Sequence[Any]) -> tuple[int, ...] | None:
    """The sizes of ``x.reshape(*sizes)`` or ``x.reshape(sizes)``, if all are ints."""
    if len(args) == 1 and isinstance(args[0], (tuple, list)):
        args = tuple(args[0])
    return tuple(args) if all(type(v) is int for v in args) else None


def shape_of(n: Any) -> tuple[int, ...] | None:
    """Per-sample shape of the tensor ``n`` holds (a stacked one's branch axis included), if known."""
    if not isinstance(n, fx.Node):
        return None
    f = n.meta.get(FEATURE)
    if f is not None:
        return tuple(f.shape)
    s = n.meta.get(STACKED)
    return (s[0], *s[1]) if s is not None else None


def permutation(n: fx.Node) -> tuple[int, ...] | None:
    """The dims order ``n`` applies to its first argument, if it is a permute/transpose."""
    if n.op != "call_method" or n.kwargs or not n.args or not isinstance(n.args[0], fx.Node):
        return None
    if n.target == "permute":
        dims = n.args[1] if len(n.args) == 2 and isinstance(n.args[1], (tuple, list)) else n.args[1:]
        ints = [v for v in dims if type(v) is int]
        if len(ints) != len(dims):
            return None
        r = len(ints)
        order = tuple(v % r for v in ints)
        return order if sorted(order) == list(range(r)) else None
    if n.target == "transpose" and len(n.args) == 3:
        x, a, b = n.args
        size = rank(x) if isinstance(x, fx.Node) else None
        if size is None or type(a) is not int or type(b) is not int:
            return None
        a, b = a % size, b % size
        swapped = list(range(size))
        swapped[a], swapped[b] = b, a
        return tuple(swapped)
    return None


def rank(n: fx.Node) -> int | None:
    """Rank of the tensor ``n`` holds (batch included), where the graph tells it for sure."""
    shape = shape_of(n)
    if shape is not None:
        return len(shape) + 1
    if n.op == "call_function" and n.target is F.unfold:
        return 3
    p = permutation(n)
    return len(p) if p is not None else None


def swaps_last_two(n: fx.Node, r: int) -> bool:
    """``n`` is a transpose of the last two of ``r`` dims."""
    return permutation(n) == (*range(r - 2), r - 1, r - 2)


def stacked_parameter(parts: Sequence[torch.Tensor | None], dim: int = 0) -> nn.Parameter | None:
    """``parts`` concatenated (detached) along ``dim`` as one parameter; None if the first is None."""
    first = parts[0]
    if first is None:
        return None
    tensors = [p.detach() for p in parts if p is not None]
    return nn.Parameter(torch.cat(tensors, dim=dim), requires_grad=first.requires_grad)


def concat_linears(ms: Sequence[nn.Linear]) -> nn.Linear:
    """One ``nn.Linear`` whose outputs are those of ``ms`` side by side (their weights concatenated)."""
    m = ms[0]
    out = sum(k.out_features for k in ms)
    new = nn.Linear(m.in_features, out, bias=m.bias is not None, device="meta", dtype=m.weight.dtype)
    weight = stacked_parameter([k.weight for k in ms])
    assert weight is not None
    new.weight = weight
    bias = stacked_parameter([k.bias for k in ms])
    if bias is not None:  # else there is none, as in every one of ms
        new.bias = bias
    return new.train(m.training)
