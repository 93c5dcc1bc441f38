"""An im2col whose windows do not overlap becomes a reshape of the image: no ``F.unfold``."""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F

from ..meta import FEATURE
from ..ops import COL, Feature
from .cost import CPU, CostModel
from .graph import bind, finish, pair

__all__ = ["rearranges", "reshape_patches"]


def rearranges(k: tuple[int, int], s: tuple[int, int], p: tuple[int, int], d: tuple[int, int]) -> bool:
    """An unfold of these sizes holds each pixel at most once: windows of the stride's size, or 1x1."""
    return d == (1, 1) and p == (0, 0) and k in (s, (1, 1))


def reshape_patches(gm: fx.GraphModule, cost: CostModel = CPU) -> int:
    """Write each ``F.unfold`` that only rearranges pixels (``rearranges``), on an image whose
    sides its stride divides, as reshapes; returns how many.

    Such an unfold's (B, C*k*k, L) is ``x.reshape(-1, C, H', k, W', k).permute(0, 1, 3, 5, 2, 4)
    .reshape(-1, C*k*k, H'*W')``; with a 1x1 kernel of stride s, the first of each s x s block:
    ``x.reshape(-1, C, H', s, W', s)``, its first chunk along both s axes, reshaped to
    (B, C, H'*W'). Its gradient is the same rearrangement back, not unfold's fold: 1 to 10 times
    faster forward and backward on a CPU, so ``cost`` is not consulted. Only ops that horizontal
    fusion can batch are used (no slicing), so it runs before the fusions.
    """
    count = 0
    graph = gm.graph
    for unfold in list(graph.nodes):
        if unfold.op != "call_function" or unfold.target is not F.unfold:
            continue
        args = bind(F.unfold, unfold)
        x = args["input"]
        k, d, p, s = (pair(args[a]) for a in ("kernel_size", "dilation", "padding", "stride"))
        feature = x.meta.get(FEATURE) if isinstance(x, fx.Node) else None
        if (k is None or s is None or p is None or d is None or feature is None or len(feature.shape) != 3
                or not rearranges(k, s, p, d)):
            continue
        c, h, w = feature.shape
        if h % s[0] or w % s[1]:
            continue
        gh, gw = h // s[0], w // s[1]
        with graph.inserting_before(unfold):
            y = x
            if s != (1, 1):
                y = _node(unfold, "reshape", x, -1, c, gh, s[0], gw, s[1])
            if k == (1, 1) and s != (1, 1):  # the top-left pixel of each block
                for dim, size in ((3, s[0]), (5, s[1])):
                    y = _node(unfold, operator.getitem, _node(unfold, torch.chunk, y, size, dim), 0)
            elif k != (1, 1):
                y = _node(unfold, "permute", y, 0, 1, 3, 5, 2, 4)
            out = _node(unfold, "reshape", y, -1, c * k[0] * k[1], gh * gw)
        out.meta[FEATURE] = Feature((c * k[0] * k[1], gh * gw), COL)  # (B, C*k*k, L), as unfold's
        unfold.replace_all_uses_with(out)
        graph.erase_node(unfold)
        count += 1
    finish(gm)
    return count


def _node(like: fx.Node, target: Callable[..., Any] | str, *args: Any) -> fx.Node:
    """A call of the function or tensor method ``target``, placed and tagged as ``like``."""
    op = "call_method" if isinstance(target, str) else "call_function"
    n = like.graph.create_node(op, target, args)
    n.meta.update(like.meta)
    return n
