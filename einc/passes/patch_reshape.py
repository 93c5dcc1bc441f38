"""An im2col whose windows do not overlap becomes a reshape of the image: no ``F.unfold``."""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import torch.fx as fx
import torch.nn.functional as F

from ..meta import FEATURE
from ..ops import COL, Feature
from .cost import CPU, CostModel
from .graph import bind, finish, pair

__all__ = ["rearranges", "reshape_patches"]


def rearranges(k: tuple[int, int], s: tuple[int, int], p: tuple[int, int], d: tuple[int, int]) -> bool:
    """An unfold of these sizes holds each pixel at most once, and reshape_patches writes it so."""
    return d == (1, 1) and p == (0, 0) and k in (s, (1, 1))


def reshape_patches(gm: fx.GraphModule, cost: CostModel = CPU) -> int:
    """Write each ``F.unfold`` with stride equal to its kernel, or a 1x1 kernel, and no padding
    as slicing and reshaping; returns how many.

    Every value of such an unfold's (B, C*k*k, L) is one pixel, once, so it is a rearrangement:
    ``x.reshape(-1, C, H', k, W', k).permute(0, 1, 3, 5, 2, 4).reshape(-1, C*k*k, H'*W')`` (x
    cropped to H'k x W'k first where k does not divide H or W), and for a 1x1 kernel of stride s
    ``x[:, :, ::s, ::s].reshape(-1, C, H'*W')``. Its gradient is the same rearrangement back,
    not unfold's fold. It runs after the fusions (conv_fusion takes the unfolds that feed a
    linear; horizontal fusion batches the unfolds of equal branches, and has no rule for the
    slicing). ``cost`` is not consulted: on a CPU the reshape is 1 to 10 times faster.
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
        gh, gw = (h - k[0]) // s[0] + 1, (w - k[1]) // s[1] + 1

        with graph.inserting_before(unfold):
            if k == (1, 1):
                y = x if s == (1, 1) else _node(unfold, operator.getitem, x, (
                    slice(None), slice(None), slice(None, None, s[0]), slice(None, None, s[1])))
                out = _node(unfold, "reshape", y, -1, c, gh * gw)
            else:
                y = x
                if (gh * k[0], gw * k[1]) != (h, w):
                    y = _node(unfold, operator.getitem, x, (
                        slice(None), slice(None), slice(None, gh * k[0]), slice(None, gw * k[1])))
                y = _node(unfold, "reshape", y, -1, c, gh, k[0], gw, k[1])
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
