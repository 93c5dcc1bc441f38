"""Common subexpressions: a weight-free op applied twice to the same input is computed once."""

from __future__ import annotations

import operator
from collections.abc import Hashable

import torch
import torch.fx as fx
import torch.nn.functional as F

from .cost import CPU, CostModel
from .graph import BINARY, SOFTMAX, UNARY, arg_key, finish

__all__ = ["dedupe"]

# Deterministic ops einc lowers to (never one that draws random numbers).
_PURE_METHODS = frozenset({"permute", "transpose", "reshape", "view", "contiguous", "mean", "sum",
                           "unflatten", "flatten", "movedim", "unsqueeze", "expand", "repeat"})
_PURE_FUNCTIONS = BINARY | UNARY | SOFTMAX | {torch.chunk, torch.split, operator.getitem, torch.cat, F.unfold,
                                              F.layer_norm}


def dedupe(gm: fx.GraphModule, cost: CostModel = CPU) -> int:
    """Compute each weight-free op once per distinct input: later copies read the first.

    Branches cloned from one tensor often start with the same op (``clone(b=8)`` then
    ``softmax`` on every branch); once batched, those copies are the same node's work.
    Computing a value once always pays: ``cost`` is not consulted.
    """
    seen: dict[Hashable, fx.Node] = {}
    count = 0
    for n in list(gm.graph.nodes):
        if not (n.op == "call_method" and n.target in _PURE_METHODS
                or n.op == "call_function" and n.target in _PURE_FUNCTIONS):
            continue
        try:
            key = (n.op, n.target, arg_key(n.args), arg_key(n.kwargs))
            hash(key)
        except TypeError:
            continue
        first = seen.setdefault(key, n)
        if first is not n:
            n.replace_all_uses_with(first)
            gm.graph.erase_node(n)
            count += 1
    finish(gm)
    return count
