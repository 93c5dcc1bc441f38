"""im2col -> linear -> col2im becomes one ``nn.Conv2d`` with the same weights."""

from __future__ import annotations

import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from ..meta import FEATURE
from .cost import CPU, CostModel
from .graph import bind, finish, only_user, order_modules, pair, shape_args, swaps_last_two
from .provenance import Reshape, record, take

__all__ = ["fuse_convolutions"]

Geometry = tuple[int, tuple[int, int], tuple[int, int], tuple[int, int], tuple[int, int]]  # C, k, s, p, d


def fuse_convolutions(gm: fx.GraphModule, cost: CostModel = CPU) -> int:
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
    A convolution is always the faster form: ``cost`` is not consulted.
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
        old = str(linear.target)
        name = _conv_name(gm, old)
        lin = modules[old]
        assert isinstance(lin, nn.Linear)
        conv = _conv_like(lin, geometry)
        record(gm, f"{name}.weight", Reshape(take(gm, f"{old}.weight"), tuple(conv.weight.shape)))
        if conv.bias is not None:
            record(gm, f"{name}.bias", take(gm, f"{old}.bias"))
        gm.add_submodule(name, conv)
        with gm.graph.inserting_before(reshape):
            node = gm.graph.call_module(name, (x,))
        node.meta.update(reshape.meta)
        reshape.replace_all_uses_with(node)
        for n in reversed(chain):
            gm.graph.erase_node(n)
        gm.delete_submodule(old)
        count += 1
    if count:
        order_modules(gm)
    finish(gm)
    return count


def _conv_chain(unfold: fx.Node, modules: dict[str, nn.Module],
                calls: dict[str, int]) -> tuple[fx.Node, Geometry, fx.Node, list[fx.Node]] | None:
    """(x, (C, k, s, p, d), linear node, [unfold, t1, linear, t2, reshape]) or None."""
    if unfold.op != "call_function" or unfold.target is not F.unfold:
        return None
    args = bind(F.unfold, unfold)
    x = args["input"]
    k, d, p, s = (pair(args[a]) for a in ("kernel_size", "dilation", "padding", "stride"))
    feature = x.meta.get(FEATURE) if isinstance(x, fx.Node) else None
    if k is None or d is None or p is None or s is None or feature is None or len(feature.shape) != 3:
        return None
    t1 = only_user(unfold)
    if t1 is None or not swaps_last_two(t1, 3):
        return None
    linear = only_user(t1)
    if (linear is None or linear.op != "call_module" or linear.args != (t1,) or linear.kwargs
            or not isinstance(linear.target, str) or calls.get(linear.target) != 1):
        return None
    lin = modules.get(linear.target)
    if type(lin) is not nn.Linear:
        return None
    t2 = only_user(linear)
    if t2 is None or not swaps_last_two(t2, 3):
        return None
    reshape = only_user(t2)
    if (reshape is None or reshape.op != "call_method" or reshape.target not in ("reshape", "view")
            or reshape.kwargs):
        return None
    c, h, w = feature.shape
    grid = tuple((size + 2 * pi - di * (ki - 1) - 1) // si + 1  # Conv2d's output size
                 for size, ki, si, pi, di in zip((h, w), k, s, p, d, strict=True))
    target = shape_args(reshape.args[1:])
    if lin.in_features != c * k[0] * k[1] or target != (-1, lin.out_features, *grid):
        return None
    return x, (c, k, s, p, d), linear, [unfold, t1, linear, t2, reshape]


def _conv_like(linear: nn.Linear, geometry: Geometry) -> nn.Conv2d:
    c, k, s, p, d = geometry
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
