"""A linear map of im2col's patches becomes one ``nn.Conv2d`` with the same weights.

einc.lower writes ``im2col`` as ``F.unfold(x).transpose(1, 2)`` (B, L, C*k*k) and ``col2im`` as
``.transpose(1, 2).reshape(-1, D, H', W')``. A linear of the patches is a convolution whatever
comes after it: ``unfold -> transpose -> linear`` is the convolution's output read as (B, L, D).
When only position-wise ops (linear, elementwise, softmax over the features) lie between it
and a ``col2im``, they act on the convolution's output directly (a linear as a 1x1
convolution) and both layout changes vanish. Between the patches and the linear, elementwise
ops with f(0) = 0 move in front of the unfold (it only copies values and pads with zeros), and
permutes that compose to none vanish.

On CPU, a linear of patches that do not overlap and have stride > 1 whose output stays a
sequence (a patch embedding) stays a linear: of the patches as reshaped by
einc.passes.patch_reshape, it is faster than a strided convolution (``CostModel.patch_conv``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from ..meta import FEATURE
from ..ops import IM, Feature
from .cost import CPU, CostModel
from .graph import (
    SOFTMAX,
    UNARY,
    bind,
    call_counts,
    finish,
    only_user,
    order_modules,
    pair,
    permutation,
    shape_args,
    swaps_last_two,
)
from .patch_reshape import rearranges
from .provenance import Reshape, record, take

__all__ = ["ZERO_KEEPING", "fuse_convolutions"]

ZERO_KEEPING = frozenset({F.leaky_relu, F.relu, torch.relu, torch.tanh, F.gelu, F.silu, torch.neg})
"""Elementwise functions with f(0) = 0: they commute with unfold, whose padding stays zero."""


@dataclass
class _Patches:
    """An ``F.unfold(x)`` read only through its transpose to (B, L, C*k*k)."""

    x: fx.Node
    unfold: fx.Node
    cols: fx.Node  # the transpose
    channels: int
    k: tuple[int, int]
    s: tuple[int, int]
    p: tuple[int, int]
    d: tuple[int, int]
    grid: tuple[int, int]


def fuse_convolutions(gm: fx.GraphModule, cost: CostModel = CPU) -> int:
    """Make each linear map of an im2col's patches a convolution; returns how many were made.

    The patches' every reader must be such a linear, after elementwise ops with f(0) = 0 (a
    clone of the patches into b linears makes b convolutions of x). ``cost`` says whether a
    patch embedding (patches that do not overlap, stride > 1, no col2im) is worth a convolution.
    """
    count = 0
    modules = dict(gm.named_modules())
    calls = call_counts(gm)
    for node in list(gm.graph.nodes):
        patches = _patches(node)
        if patches is None:
            continue
        heads = [_head(u, patches, modules, calls) for u in patches.cols.users]
        if not heads or any(h is None for h in heads):
            continue
        tails = [_tail(h[1], patches.grid, modules, calls) for h in heads if h is not None]
        if (not cost.patch_conv and None in tails and patches.s != (1, 1)
                and rearranges(patches.k, patches.s, patches.p, patches.d)):
            continue  # a patch embedding: the linear of the patches reshaped is faster
        channels_last: dict[fx.Node, fx.Node] = {}  # one per image the convolutions read
        for head, tail in zip(heads, tails, strict=True):
            assert head is not None
            _convolve(gm, patches, *head, tail, modules, channels_last)
        gm.graph.erase_node(patches.cols)
        gm.graph.erase_node(patches.unfold)
        count += len(heads)
    if count:
        order_modules(gm)
    finish(gm)
    return count


def _patches(unfold: fx.Node) -> _Patches | None:
    if unfold.op != "call_function" or unfold.target is not F.unfold:
        return None
    args = bind(F.unfold, unfold)
    x = args["input"]
    k, d, p, s = (pair(args[a]) for a in ("kernel_size", "dilation", "padding", "stride"))
    feature = x.meta.get(FEATURE) if isinstance(x, fx.Node) else None
    if k is None or d is None or p is None or s is None or feature is None or len(feature.shape) != 3:
        return None
    cols = only_user(unfold)
    if cols is None or not swaps_last_two(cols, 3):
        return None
    c, h, w = feature.shape
    grid = tuple((size + 2 * pi - di * (ki - 1) - 1) // si + 1  # Conv2d's output size
                 for size, ki, si, pi, di in zip((h, w), k, s, p, d, strict=True))
    return _Patches(x, unfold, cols, c, k, s, p, d, (grid[0], grid[1]))


def _linear_call(n: fx.Node, modules: dict[str, nn.Module], calls: dict[str, int]) -> nn.Linear | None:
    """The ``nn.Linear`` ``n`` calls on its one argument, if no other node calls it."""
    if n.op != "call_module" or len(n.args) != 1 or n.kwargs or not isinstance(n.target, str):
        return None
    m = modules.get(n.target)
    return m if type(m) is nn.Linear and calls.get(n.target) == 1 else None


def _head(n: fx.Node, patches: _Patches, modules: dict[str, nn.Module],
          calls: dict[str, int]) -> tuple[list[fx.Node], fx.Node] | None:
    """(the ops from ``n`` to a linear of the patches, that linear), or None.

    The ops are elementwise with f(0) = 0, and permutes that compose to no permutation.
    """
    chain: list[fx.Node] = []
    order = (0, 1, 2)  # which dim of the patches each dim is, after the permutes so far
    prev = patches.cols
    while True:
        perm = permutation(n)
        if perm is not None and len(perm) == 3:
            order = (order[perm[0]], order[perm[1]], order[perm[2]])
        elif not (n.op == "call_function" and n.target in ZERO_KEEPING and _unary_of(n, prev)):
            break
        chain.append(n)
        nxt = only_user(n)
        if nxt is None:
            return None
        prev, n = n, nxt
    lin = _linear_call(n, modules, calls)
    if order != (0, 1, 2) or lin is None or lin.in_features != patches.channels * patches.k[0] * patches.k[1]:
        return None
    return chain, n


def _unary_of(n: fx.Node, x: fx.Node) -> bool:
    """``n`` applies its function to ``x`` alone (its other arguments constants)."""
    rest = (*n.args[1:], *n.kwargs.values())
    return bool(n.args) and n.args[0] is x and not any(isinstance(a, fx.Node) for a in rest)


def _tail(linear: fx.Node, grid: tuple[int, int], modules: dict[str, nn.Module],
          calls: dict[str, int]) -> tuple[list[fx.Node], fx.Node] | None:
    """(position-wise ops after ``linear``, the col2im's reshape that ends them), or None."""
    ops: list[fx.Node] = []
    n = linear
    lin = modules[str(linear.target)]
    assert isinstance(lin, nn.Linear)
    width = lin.out_features
    while True:
        nxt = only_user(n)
        if nxt is None:
            return None
        if swaps_last_two(nxt, 3):  # col2im: transpose, then reshape to the grid
            reshape = only_user(nxt)
            if (reshape is None or reshape.op != "call_method" or reshape.target not in ("reshape", "view")
                    or reshape.kwargs or shape_args(reshape.args[1:]) != (-1, width, *grid)):
                return None
            return ops, reshape
        one = _linear_call(nxt, modules, calls)
        if one is not None:
            width = one.out_features
        elif not (_unary_of(nxt, n) and (nxt.target in UNARY or _softmax_last(nxt))):
            return None
        ops.append(nxt)
        n = nxt


def _softmax_last(n: fx.Node) -> bool:
    return n.op == "call_function" and n.target in SOFTMAX and len(n.args) == 1 and \
        set(n.kwargs) == {"dim"} and n.kwargs["dim"] in (-1, 2)


def _convolve(gm: fx.GraphModule, patches: _Patches, chain: list[fx.Node], linear: fx.Node,
              tail: tuple[list[fx.Node], fx.Node] | None, modules: dict[str, nn.Module],
              channels_last: dict[fx.Node, fx.Node]) -> None:
    """Replace ``chain`` and ``linear`` (and a position-wise tail up to a col2im) by a convolution.

    Without a col2im the convolution's output is read as the linear's (B, L, D) or, where
    a transpose follows, as (B, D, L).
    """
    graph = gm.graph
    lin = modules[str(linear.target)]
    assert isinstance(lin, nn.Linear)
    width, grid = lin.out_features, patches.grid
    back = only_user(linear)
    if tail is not None:
        last = tail[1]
    elif back is not None and swaps_last_two(back, 3):
        last = back
    else:
        last = linear
    with graph.inserting_before(last):
        h = patches.x
        for e in chain:  # the elementwise ops in front of the unfold, on the image
            if permutation(e) is None:
                h = _copy(graph, e, h, patches.x.meta[FEATURE])
        conv = _conv_like(lin, patches)
        if last is back:  # (B, D, L): the convolution's own layout
            h = _module(gm, linear, conv, h, Feature((width, *grid), IM))
            h = graph.call_method("reshape", (h, -1, width, grid[0] * grid[1]))
            h.meta.update(back.meta)
        elif tail is None:
            # the linear's (B, L, D) for what reads it: from a channels-last convolution a view, and
            # contiguous (a transposed view slows what follows, a sum with a table 1.7x). The
            # conversion is the image's (outside the branches of a clone of the patches), once.
            cl = channels_last.get(h)
            if cl is None:
                where, like = (patches.unfold, patches.unfold) if h is patches.x else (last, h)
                with graph.inserting_before(where):
                    cl = graph.call_method("contiguous", (h,), {"memory_format": torch.channels_last})
                cl.meta.update({**like.meta, FEATURE: h.meta[FEATURE]})
                channels_last[h] = cl
            h = _module(gm, linear, conv, cl, Feature((width, *grid), IM))
            h = graph.call_method("permute", (h, 0, 2, 3, 1))
            h.meta.update({**linear.meta, FEATURE: Feature((*grid, width), IM)})
            h = graph.call_method("reshape", (h, -1, grid[0] * grid[1], width))
            h.meta.update(linear.meta)
        else:
            h = _module(gm, linear, conv, h, Feature((width, *grid), IM))
            for n in tail[0]:
                if n.op == "call_module":
                    one = modules[str(n.target)]
                    assert isinstance(one, nn.Linear)
                    width = one.out_features
                    h = _module(gm, n, _conv_like(one), h, Feature((width, *grid), IM))
                elif n.target in UNARY:
                    h = _copy(graph, n, h, Feature((width, *grid), IM))
                else:  # softmax over the features: over the channels
                    h = _copy(graph, n, h, Feature((width, *grid), IM), dim=1)
    last.replace_all_uses_with(h)
    dead = [*chain, linear]
    if last is back:
        dead.append(back)
    elif tail is not None:
        col2im = last.args[0]
        assert isinstance(col2im, fx.Node)
        dead += [*tail[0], col2im, last]
    for n in reversed(dead):
        graph.erase_node(n)


def _copy(graph: fx.Graph, n: fx.Node, x: fx.Node, feature: Feature, **kwargs: Any) -> fx.Node:
    """``n``'s function applied to ``x`` (its constants kept, ``kwargs`` replaced)."""
    new = graph.call_function(n.target, (x, *n.args[1:]), {**n.kwargs, **kwargs})  # type: ignore[arg-type]
    new.meta.update({**n.meta, FEATURE: feature})
    return new


def _module(gm: fx.GraphModule, linear: fx.Node, conv: nn.Conv2d, x: fx.Node, feature: Feature) -> fx.Node:
    """Call ``conv``, which takes over the weights (and the place) of the linear ``linear`` calls."""
    old = str(linear.target)
    name = _conv_name(gm, old)
    record(gm, f"{name}.weight", Reshape(take(gm, f"{old}.weight"), tuple(conv.weight.shape)))
    if conv.bias is not None:
        record(gm, f"{name}.bias", take(gm, f"{old}.bias"))
    gm.delete_submodule(old)
    gm.add_submodule(name, conv)
    node = gm.graph.call_module(name, (x,))
    node.meta.update({**linear.meta, FEATURE: feature})
    return node


def _conv_like(linear: nn.Linear, patches: _Patches | None = None) -> nn.Conv2d:
    """A convolution with ``linear``'s weights, over ``patches``' windows (None: a 1x1 convolution)."""
    c, k, s, p, d = ((linear.in_features, (1, 1), 1, 0, 1) if patches is None else
                     (patches.channels, patches.k, patches.s, patches.p, patches.d))
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
