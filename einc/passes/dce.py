"""Dead code: nodes whose value nobody reads, then modules and parameters no node uses."""

from __future__ import annotations

import torch.fx as fx

from .cost import CPU, CostModel
from .graph import finish
from .provenance import forget_missing

__all__ = ["dead_code"]


def dead_code(gm: fx.GraphModule, cost: CostModel = CPU) -> int:
    """Drop nodes whose value nobody reads, then modules and parameters no node uses."""
    before = len(gm.graph.nodes)
    gm.graph.eliminate_dead_code()
    removed = before - len(gm.graph.nodes)
    gm.delete_all_unused_submodules()
    used = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    for name in [k for k in gm._parameters if k not in used] + [k for k in gm._buffers if k not in used]:
        delattr(gm, name)
        removed += 1
    forget_missing(gm)  # entries now gone have no state to re-pack
    finish(gm)
    return removed
