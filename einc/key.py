"""A network's key: one short hex string per network, whichever derivation wrote it.

Two derivation trees that compute the same network get the same key, so a search can tell a
repeat it has already trained from a new candidate: ``sequential(relu, sequential(norm, x))``
and ``sequential(sequential(relu, norm), x)`` are one network, and so are ``[relu, norm]`` and
``[norm, relu]`` cloned and summed by ``add``. Anything that changes the function changes the
key: the order of operations, of ``concat``'s branches or of a ``group-dim``'s pieces, any
hyperparameter.

**Why the tree and not the optimised graph.** The graph (einc.build) costs 0.1 s to seconds
per candidate, and its form depends on the device's cost model (branches batched on one
device, not on another), so the same network would get one key on a CPU and another on a GPU.
The tree holds exactly what lowering reads: einc.lower walks the leaves in order and runs
fork ``i``'s subtree on feature ``i``; nonterminal names and labels never reach the graph. So
the key is a hash of that reading, canonicalised by rules that are exact for every input:

* the nesting of expansions is dropped: a tree is the flat sequence of its leaves and forks,
  and each branch of a fork is its own sequence (re-association, any grammar);
* ``identity`` vanishes; consecutive ``permute``\\ s compose into one, and vanish when that is
  the identity; ``im2col(k=1, s=1, p=0)`` directly followed by ``col2im`` vanishes (one
  position per column: folding gives the input back);
* a fork between ``clone`` (every branch reads one value) and ``add`` (a sum) is a multiset of
  branches: their keys are sorted. A repeated fork (``[x]*4``) is its ``copies`` branches.

A sequence's key hashes its items' text (an op with its arguments, or a fork's branch keys) with
BLAKE2b: no process salt, so the key is stable across runs, processes and machines. The key is of
the network on a given input, like the bracket string: the input's mode and shape are not part of
it. Under ``add`` of three or more branches, a different order can round differently in floating
point (sums associate left to right); the key treats such networks as one, as a person would.
A candidate's key costs about as much as printing its string: tens of microseconds for an
einspace sample, a few milliseconds for an 8,000-op chain (``bench/bench_keys.py``).
"""

from __future__ import annotations

from hashlib import blake2b
from typing import Any

from .tree import Expansion, Leaf, Node, deep

__all__ = ["key"]

IDENTITY, PERMUTE, IM2COL, COL2IM = "identity", "permute", "im2col", "col2im"
EQUAL_OUTPUTS = frozenset({"clone"})
"""Branching ops whose b outputs are one value: the branches after them are interchangeable inputs-wise."""
COMMUTATIVE = frozenset({"add"})
"""Aggregations indifferent to the order of their inputs."""
_POINTWISE_IM2COL = (("k", 1), ("p", 0), ("s", 1))


def key(tree: Node) -> str:
    """The network's key: 16 hex digits (64 bits), equal for trees that compute the same network."""
    return deep(_sequence(tree))[:16]


def _sequence(root: Node):
    """The key of ``root`` read as one sequence; a generator run by einc.tree.deep (any depth)."""
    items: list[Any] = []  # Leaf-like (op, args) pairs, or a fork's list of branch keys
    stack = [root]
    while stack:
        node = stack.pop()
        if type(node) is Expansion:
            stack.extend(reversed(node.children))
        elif type(node) is Leaf:
            _push(items, node.op, node.args)
        elif node.repeated:  # type: ignore[union-attr]
            items.append([(yield _sequence(node.children[0]))] * node.copies)  # type: ignore[union-attr]
        else:
            branches = []
            for child in node.children:  # type: ignore[union-attr]
                branches.append((yield _sequence(child)))
            items.append(branches)
    text = []
    for i, item in enumerate(items):
        if type(item) is list:
            if 0 < i < len(items) - 1 and type(items[i - 1]) is tuple and items[i - 1][0] in EQUAL_OUTPUTS \
                    and type(items[i + 1]) is tuple and items[i + 1][0] in COMMUTATIVE:
                item = sorted(item)
            text.append("[" + ",".join(item) + "]")
        else:
            text.append(f"{item[0]}{item[1]!r};")
    return blake2b("".join(text).encode(), digest_size=16).hexdigest()


def _push(items: list[Any], op: str, args: tuple) -> None:
    """Append one op, applying the vanishing rules against the op before it."""
    if op == IDENTITY:
        return
    last = items[-1] if items and type(items[-1]) is tuple else None
    if op == PERMUTE and last is not None and last[0] == PERMUTE:
        (_, first), (_, then) = last[1][0], args[0]
        order = tuple(first[i - 1] for i in then)  # out dim j is the input's dim first[then[j]]
        items.pop()
        if order != tuple(range(1, len(order) + 1)):
            items.append((PERMUTE, (("o", order),)))
        return
    if op == COL2IM and last is not None and last == (IM2COL, _POINTWISE_IM2COL):
        items.pop()
        return
    items.append((op, args))
