"""Exact rewrites of lowered torch.fx graphs: same function, fewer or faster nodes.

Each pass takes a GraphModule, rewrites it in place, returns how many rewrites it made and
leaves the graph linted and recompiled. "Exact" means the outputs agree with the unrewritten
module up to float rounding, for any input and any weights (tests/test_passes.py checks this
in float64 on every seed). A pass reads only the graph, its modules and the per-sample shapes
einc.lower leaves in ``node.meta["einc_feature"]``; of the rest of einc it imports only
einc.packing, to record how weights move (so state dicts re-pack between the two forms).

    >>> gm = einc.build(resnet18, (3, 64, 64), optimize=False)
    >>> optimize(gm)               # 20 convolutions, no unfold left
"""

from __future__ import annotations

import inspect
import operator
from typing import Any, Callable

import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from .packing import META as _PACKING, Reshape, record, take

__all__ = ["PASSES", "dead_code", "fuse_convolutions", "optimize", "order_add_operands", "remove_permutes"]


def optimize(gm: fx.GraphModule) -> fx.GraphModule:
    """Run every pass of ``PASSES`` in order; returns ``gm`` (rewritten in place)."""
    for p in PASSES:
        p(gm)
    return gm


# ---------------------------------------------------------------- im2col . linear . col2im -> Conv2d


def fuse_convolutions(gm: fx.GraphModule) -> int:
    """Turn each im2col -> linear -> col2im chain into one ``nn.Conv2d`` with the same weights.

    The chain, as einc.lower writes it (each intermediate value with a single user)::

        cols = F.unfold(x, kernel_size=k, padding=p, stride=s)   # (B, C*k*k, L)
        t = cols.transpose(1, 2)                                 # (B, L, C*k*k)
        y = linear_n(t)                                          # (B, L, D)
        y = y.transpose(1, 2).reshape(-1, D, H', W')             # (B, D, H', W')

    is ``conv_n(x)`` with ``conv_n = nn.Conv2d(C, D, k, stride=s, padding=p)``, weight
    ``linear.weight.reshape(D, C, k, k)`` (unfold orders a column C slowest, then the kernel
    row and column: a Conv2d weight's input layout) and the same bias. The rewrite is made only
    when the reshape's grid is the convolution's output grid for the input's known (H, W).
    """
    count = 0
    modules = dict(gm.named_modules())
    calls: dict[str, int] = {}
    for n in gm.graph.nodes:
        if n.op == "call_module":
            calls[n.target] = calls.get(n.target, 0) + 1
    for unfold in list(gm.graph.nodes):
        match = _conv_chain(unfold, modules, calls)
        if match is None:
            continue
        x, geometry, linear, chain = match
        reshape = chain[-1]
        name = _conv_name(gm, linear.target)
        conv = _conv_like(modules[linear.target], *geometry)
        record(gm, f"{name}.weight", Reshape(take(gm, f"{linear.target}.weight"), tuple(conv.weight.shape)))
        if conv.bias is not None:
            record(gm, f"{name}.bias", take(gm, f"{linear.target}.bias"))
        gm.add_submodule(name, conv)
        with gm.graph.inserting_before(reshape):
            conv = gm.graph.call_module(name, (x,))
        conv.meta.update(reshape.meta)
        reshape.replace_all_uses_with(conv)
        for n in reversed(chain):
            gm.graph.erase_node(n)
        gm.delete_submodule(linear.target)
        count += 1
    if count:
        _order_modules(gm)
    _finish(gm)
    return count


def _conv_chain(unfold: fx.Node, modules: dict[str, nn.Module], calls: dict[str, int]):
    """(x, (C, k, s, p, d), linear node, [unfold, t1, linear, t2, reshape]) or None."""
    if unfold.op != "call_function" or unfold.target is not F.unfold:
        return None
    args = _bind(F.unfold, unfold)
    x = args["input"]
    k, d, p, s = (_pair(args[a]) for a in ("kernel_size", "dilation", "padding", "stride"))
    feature = x.meta.get("einc_feature") if isinstance(x, fx.Node) else None
    if None in (k, d, p, s) or feature is None or len(feature.shape) != 3:
        return None
    t1 = _only_user(unfold)
    if t1 is None or not _swaps_last_two(t1, 3):
        return None
    linear = _only_user(t1)
    if (linear is None or linear.op != "call_module" or linear.args != (t1,) or linear.kwargs
            or calls.get(linear.target) != 1 or type(modules.get(linear.target)) is not nn.Linear):
        return None
    t2 = _only_user(linear)
    if t2 is None or not _swaps_last_two(t2, 3):
        return None
    reshape = _only_user(t2)
    if (reshape is None or reshape.op != "call_method" or reshape.target not in ("reshape", "view")
            or reshape.kwargs):
        return None
    c, h, w = feature.shape
    lin = modules[linear.target]
    grid = tuple((size + 2 * pi - di * (ki - 1) - 1) // si + 1  # Conv2d's output size
                 for size, ki, si, pi, di in zip((h, w), k, s, p, d))
    target = _shape_args(reshape.args[1:])
    if lin.in_features != c * k[0] * k[1] or target != (-1, lin.out_features, *grid):
        return None
    return x, (c, k, s, p, d), linear, [unfold, t1, linear, t2, reshape]


def _conv_like(linear: nn.Linear, c: int, k, s, p, d) -> nn.Conv2d:
    # built on the meta device: the weights are the linear's, so no random initialisation is paid for
    conv = nn.Conv2d(c, linear.out_features, k, stride=s, padding=p, dilation=d, bias=linear.bias is not None,
                     device="meta", dtype=linear.weight.dtype)
    conv.weight = nn.Parameter(linear.weight.detach().reshape(linear.out_features, c, *k),
                               requires_grad=linear.weight.requires_grad)
    if linear.bias is not None:
        conv.bias = nn.Parameter(linear.bias.detach(), requires_grad=linear.bias.requires_grad)
    conv.train(linear.training)
    return conv


def _conv_name(gm: fx.GraphModule, linear_name: str) -> str:
    """``linear_7`` becomes ``conv_7``: the name still says which layer of the tree it was."""
    stem, _, num = linear_name.rpartition("_")
    base = f"conv_{num}" if stem == "linear" and num.isdigit() else f"conv_{linear_name}"
    name, i = base, 1
    while hasattr(gm, name):
        name, i = f"{base}_{i}", i + 1
    return name


# ---------------------------------------------------------------- permutes


def remove_permutes(gm: fx.GraphModule) -> int:
    """Fold chains of permutes: consecutive ones compose into one; an identity vanishes.

    ``x.permute(0, 2, 1).permute(0, 2, 1)`` is ``x``; ``x.permute(0, 2, 3, 1).transpose(1, 3)``
    is ``x.permute(0, 1, 3, 2)``. ``transpose`` counts as a permute when its input's rank is
    known. The inner permute stays while it has other users (dead_code removes it otherwise).
    """
    count = 0
    for n in list(gm.graph.nodes):
        outer = _permutation(n)
        if outer is None:
            continue
        src, order = n.args[0], outer
        inner = _permutation(src) if isinstance(src, fx.Node) else None
        if inner is not None:  # out[i] = mid[outer[i]] = src_in[inner[outer[i]]]
            src, order = src.args[0], tuple(inner[i] for i in outer)
        if order == tuple(range(len(order))):
            n.replace_all_uses_with(src)
            gm.graph.erase_node(n)
            count += 1
        elif inner is not None:
            with gm.graph.inserting_before(n):
                new = gm.graph.call_method("permute", (src, *order))
            new.meta.update(n.meta)
            n.replace_all_uses_with(new)
            gm.graph.erase_node(n)
            count += 1
    _finish(gm)
    return count


def _permutation(n: fx.Node) -> tuple[int, ...] | None:
    """The dims order ``n`` applies to its first argument, if it is a permute/transpose."""
    if n.op != "call_method" or n.kwargs or not n.args or not isinstance(n.args[0], fx.Node):
        return None
    if n.target == "permute":
        dims = n.args[1] if len(n.args) == 2 and isinstance(n.args[1], (tuple, list)) else n.args[1:]
        if not all(type(v) is int for v in dims):
            return None
        r = len(dims)
        order = tuple(v % r for v in dims)
        return order if sorted(order) == list(range(r)) else None
    if n.target == "transpose" and len(n.args) == 3 and all(type(v) is int for v in n.args[1:]):
        r = _rank(n.args[0])
        if r is None:
            return None
        a, b = (v % r for v in n.args[1:])
        order = list(range(r))
        order[a], order[b] = b, a
        return tuple(order)
    return None


def _rank(n: fx.Node) -> int | None:
    """Rank of the tensor ``n`` holds (batch included), where the graph tells it for sure."""
    f = n.meta.get("einc_feature")
    if f is not None:
        return len(f.shape) + 1
    stacked = n.meta.get("einc_stacked")  # einc.fusion's (b, per-branch shape)
    if stacked is not None:
        return len(stacked[1]) + 2
    if n.op == "call_function" and n.target is F.unfold:
        return 3
    p = _permutation(n)
    return len(p) if p is not None else None


def _swaps_last_two(n: fx.Node, rank: int) -> bool:
    return _permutation(n) == tuple(range(rank - 2)) + (rank - 1, rank - 2)


# ---------------------------------------------------------------- operand order


_LAYOUT_VIEWS = ("permute", "transpose", "movedim")


def order_add_operands(gm: fx.GraphModule) -> int:
    """Put a permuted view second in an addition: ``t.permute(0, 2, 1) + x`` becomes ``x + ...``.

    Float addition is commutative, so the values are the same bit for bit; but an elementwise
    result takes the memory layout of its first operand where they disagree, and a residual
    sum laid out like a transposed view makes every later op of the layer copy or stride
    (the Mixer's token-mixing sum: measured 2-7% of a training step).
    """
    count = 0
    for n in gm.graph.nodes:
        if n.op != "call_function" or n.target is not operator.add or n.kwargs or len(n.args) != 2:
            continue
        a, b = n.args
        if isinstance(a, fx.Node) and isinstance(b, fx.Node) and _layout_view(a) and not _layout_view(b):
            n.args = (b, a)
            count += 1
    _finish(gm)
    return count


def _layout_view(n: fx.Node) -> bool:
    return n.op == "call_method" and n.target in _LAYOUT_VIEWS


# ---------------------------------------------------------------- dead code


def dead_code(gm: fx.GraphModule) -> int:
    """Drop nodes whose value nobody reads, then modules and parameters no node uses."""
    before = len(gm.graph.nodes)
    gm.graph.eliminate_dead_code()
    removed = before - len(gm.graph.nodes)
    gm.delete_all_unused_submodules()
    used = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    for name in [k for k in gm._parameters if k not in used] + [k for k in gm._buffers if k not in used]:
        delattr(gm, name)
        removed += 1
    table = gm.meta.get(_PACKING)
    if table is not None:  # entries now gone have no state to re-pack
        keys = set(gm.state_dict())
        table["recipes"] = {k: r for k, r in table["recipes"].items() if k in keys}
    _finish(gm)
    return removed


PASSES: tuple[Callable[[fx.GraphModule], int], ...] = (fuse_convolutions, remove_permutes, order_add_operands,
                                                       dead_code)


# ---------------------------------------------------------------- helpers


def _finish(gm: fx.GraphModule) -> None:
    gm.graph.lint()
    gm.recompile()


def _order_modules(gm: fx.GraphModule) -> None:
    """Re-register submodules in graph order, so state_dict and printing follow the network."""
    first = {}
    for n in gm.graph.nodes:
        if n.op == "call_module":
            first.setdefault(n.target, len(first))
    ordered = sorted(gm._modules.items(), key=lambda kv: first.get(kv[0], len(first)))
    gm._modules.clear()
    gm._modules.update(ordered)


def _only_user(n: fx.Node) -> fx.Node | None:
    users = list(n.users)
    return users[0] if len(users) == 1 else None


_SIGNATURES: dict[Callable, inspect.Signature] = {}


def _bind(fn: Callable, n: fx.Node) -> dict[str, Any]:
    sig = _SIGNATURES.get(fn)
    if sig is None:
        sig = _SIGNATURES[fn] = inspect.signature(fn)
    bound = sig.bind(*n.args, **n.kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)


def _pair(v: Any) -> tuple[int, int] | None:
    if type(v) is int:
        return (v, v)
    if isinstance(v, (tuple, list)) and len(v) == 2 and all(type(e) is int for e in v):
        return tuple(v)  # type: ignore[return-value]
    return None


def _shape_args(args: tuple) -> tuple | None:
    if len(args) == 1 and isinstance(args[0], (tuple, list)):
        args = tuple(args[0])
    return tuple(args) if all(type(v) is int for v in args) else None
