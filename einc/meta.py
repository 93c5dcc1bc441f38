"""The keys einc writes into torch.fx ``node.meta`` and ``GraphModule.meta``, in one place.

einc.lower writes ``PATH``, ``BRANCH`` and ``FEATURE`` on nodes and ``INFO`` on the module; the
passes (einc.passes) read them, add ``STACKED`` and ``BATCHED`` to the nodes of a batched branch
block and keep the weight provenance table under ``PROVENANCE``; einc.emit reads ``INFO`` and
``FEATURE``. No torch here: the keys are plain strings.
"""

from __future__ import annotations

__all__ = ["BATCHED", "BRANCH", "FEATURE", "INFO", "PATH", "PROVENANCE", "STACKED"]

# -- node.meta

PATH = "einc_path"
"""The tree path of the leaf whose lowering made the node (``()`` for the input and the head), as an
``einc.tree.Trail``: it iterates, compares and hashes as the tuple."""

BRANCH = "einc_branch"
"""Which copy of which fork the node belongs to: ``((fork path, copy), ...)``, outermost first.

Every copy of a repeated fork (``[M]*4``) is lowered from the same subtree, so its nodes share
``PATH``; ``BRANCH`` tells them apart. A branching leaf's i-th output, when it is copy i's own
value (a group-dim's piece, not a clone's shared tensor), belongs to copy i.
"""

FEATURE = "einc_feature"
"""The per-sample ``einc.ops.Feature`` (shape, mode, grid) of the value; None where unknown."""

STACKED = "einc_stacked"
"""On a value of a batched block: ``(b, per-branch per-sample shape)``, layout (B, b, ...)."""

BATCHED = "einc_batched"
"""On a node made by horizontal fusion: the number b of branches it computes at once."""

# -- GraphModule.meta

INFO = "einc"
"""``{"arch", "input_shape", "num_classes", "output_shape", "init"}``: what einc.lower built."""

PROVENANCE = "einc_packing"
"""einc.passes.provenance's table: how each state-dict entry is made of the lowered ones."""
