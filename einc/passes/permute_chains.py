"""Chains of permutes fold: consecutive ones compose into one, an identity vanishes."""

from __future__ import annotations

import torch.fx as fx

from .cost import CPU, CostModel
from .graph import finish, permutation

__all__ = ["remove_permutes"]


def remove_permutes(gm: fx.GraphModule, cost: CostModel = CPU) -> int:
    """Fold chains of permutes: consecutive ones compose into one; an identity vanishes.

    ``x.permute(0, 2, 1).permute(0, 2, 1)`` is ``x``; ``x.permute(0, 2, 3, 1).transpose(1, 3)``
    is ``x.permute(0, 1, 3, 2)``. ``transpose`` counts as a permute when its input's rank is
    known. The inner permute stays while it has other users (dead_code removes it otherwise).
    Fewer ops always pay: ``cost`` is not consulted.
    """
    count = 0
    for n in list(gm.graph.nodes):
        outer = permutation(n)
        if outer is None:
            continue
        src = n.args[0]
        assert isinstance(src, fx.Node)
        order = outer
        inner = permutation(src)
        if inner is not None:  # out[i] = mid[outer[i]] = src_in[inner[outer[i]]]
            nxt = src.args[0]
            assert isinstance(nxt, fx.Node)
            src, order = nxt, tuple(inner[i] for i in outer)
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
    finish(gm)
    return count
