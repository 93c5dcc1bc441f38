"""The optimisation stage: exact rewrites of lowered torch.fx graphs, one pipeline.

Each pass takes a GraphModule and a cost model, rewrites the module in place, returns how many
rewrites it made and leaves the graph linted and recompiled. "Exact" means the outputs agree
with the unrewritten module up to float rounding, for any input and any weights (the tests
check it in float64, in eval and train mode, gradients included). A pass reads only the graph,
its modules and the per-sample shapes einc.lower leaves in the node meta (keys: einc.meta);
the cost model (``cost``) only chooses among exact forms, per device. The passes, in
``PIPELINE`` order:

* ``fuse_convolutions`` (conv_fusion): a linear of im2col's patches becomes an ``nn.Conv2d``;
* ``reshape_patches`` (patch_reshape): an unfold whose windows do not overlap becomes a reshape;
* ``remove_permutes`` (permute_chains): consecutive permutes compose, identities vanish;
* ``order_add_operands`` (operand_order): a permuted view goes second in a sum;
* ``dead_code`` (dce): unread nodes, unused modules and parameters go;
* ``batch_branches`` (horizontal): a branching module's b equal branches run once on stacked
  values (b linears one wider linear or one batched product, b convolutions one wider or one
  grouped convolution, b BatchNorms one, ...);
* ``dedupe`` (cse): a weight-free op applied twice to the same input is computed once;
* ``merge_linears``: linears reading one tensor become one whose output is split;
* ``fuse_attention`` (attention): ``softmax(q @ k^T * c) @ v`` becomes
  ``F.scaled_dot_product_attention``;
* then ``remove_permutes`` and ``dead_code`` again, for what the fusions left.

Weights move (concatenated, reshaped) and the state dict's keys change; einc.passes.provenance
records how, so ``pack_state_dict`` / ``unpack_state_dict`` convert a state dict of the
unoptimised network (``optimize=False``) to the optimised one and back.

    >>> raw = einc.build(vit, (3, 64, 64), optimize=False)     # 4 heads: 12 Linear(512, 64)
    >>> gm = optimize(copy.deepcopy(raw), device="cpu")         # one Linear(512, 768), one SDPA
    >>> gm.load_state_dict(pack_state_dict(raw.state_dict(), gm))
    >>> assert_same_function(raw, gm, (3, 64, 64))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch.fx as fx

from ..tree import gc_paused
from .attention import fuse_attention
from .conv_fusion import fuse_convolutions
from .cost import CPU, CUDA, CostModel, cost_model
from .cse import dedupe
from .dce import dead_code
from .graph import deferred, finish, order_modules
from .horizontal import batch_branches
from .merge_linears import merge_linears
from .operand_order import order_add_operands
from .patch_reshape import reshape_patches
from .permute_chains import remove_permutes
from .provenance import pack_state_dict, unpack_state_dict

__all__ = ["CPU", "CUDA", "FUSIONS", "LOCAL", "PIPELINE", "CostModel", "Pass", "batch_branches", "cost_model",
           "dead_code", "dedupe", "fuse_attention", "fuse_convolutions", "merge_linears", "optimize",
           "order_add_operands", "pack_state_dict", "remove_permutes", "reshape_patches", "unpack_state_dict"]

Pass = Callable[[fx.GraphModule, CostModel], int]

LOCAL: tuple[Pass, ...] = (fuse_convolutions, reshape_patches, remove_permutes, order_add_operands, dead_code)
"""The local rewrites, first: the fusions match the forms they leave."""

FUSIONS: tuple[Pass, ...] = (batch_branches, dedupe, merge_linears, fuse_attention)
"""The passes that merge parallel work into fewer, larger ops."""

PIPELINE: tuple[Pass, ...] = (*LOCAL, *FUSIONS, remove_permutes, dead_code)
"""What ``optimize`` runs: the local rewrites, the fusions, then a clean-up of what they left."""


def optimize(gm: fx.GraphModule, device: str | None = None, cost: CostModel | None = None,
             passes: Sequence[Pass] = PIPELINE) -> fx.GraphModule:
    """Run ``passes`` (every pass of ``PIPELINE``) in order; returns ``gm`` (rewritten in place).

    ``cost`` (default: ``cost_model(device)``; device None: cuda if available, else cpu) chooses
    where a batched form pays.
    """
    model = cost if cost is not None else cost_model(device)
    with gc_paused():  # a big graph's nodes would set off full collections (einc.tree.gc_paused)
        with deferred():  # one lint and recompile at the end, not one per pass
            for p in passes:
                p(gm, model)
        order_modules(gm)
        finish(gm)
    return gm
