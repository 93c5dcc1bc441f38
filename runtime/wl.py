"""Weisfeiler-Lehman subtree features of derivation trees, and the kernel between them.

A tree's features at depth 0 are its node labels counted (every operation with its
hyperparameters, every nonterminal with its alternative, every fork with its factor): the op
counts. At depth ``t`` each node is relabelled by its own label and its children's, in order
(order is part of the function: ``sequential(a, b)`` is not ``sequential(b, a)``), so a depth-``t``
label names a whole subtree ``t`` levels deep. The kernel of depth ``h`` is the dot product of
the counts of depths 0..h, normalised to 1 between a tree and itself (Shervashidze et al. 2011;
used for NAS by Ru et al. 2021, "Interpretable Neural Architecture Search via Bayesian
Optimisation with Weisfeiler-Lehman Kernels", and on grammar spaces by Schrodi et al. 2023).

Labels are content digests (blake2b), not Python's ``hash``, which changes from process to
process: features must be the same in a resumed search. Counts are integers and their dot
products are sums of integers below 2**53, so the kernel's numerator is exact in float64 in any
summation order; nothing here depends on threads or on the order trees were seen.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence

import numpy as np

from einc.notation import show
from einc.tree import Expansion, Leaf, Node

Features = tuple[Counter[str], ...]
"""One Counter of labels per depth 0..h."""


def _label(node: Node) -> str:
    if isinstance(node, Leaf):
        return show(node)
    if isinstance(node, Expansion):
        return node.head if node.label is None else f"{node.head}:{node.label}"
    return f"fork*{node.copies}" if node.repeated else f"fork{node.copies}"


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=9).hexdigest()


def features(tree: Node, depth: int) -> Features:
    """The label counts of ``tree`` at depths 0..``depth`` (iterative: any tree depth)."""
    nodes: list[Node] = []
    kids: list[list[int]] = []
    stack: list[tuple[Node, int]] = [(tree, -1)]
    while stack:  # preorder; a parent's children are popped (and numbered) in their order
        node, parent = stack.pop()
        if parent >= 0:
            kids[parent].append(len(nodes))
        nodes.append(node)
        kids.append([])
        if not isinstance(node, Leaf):
            stack.extend((c, len(nodes) - 1) for c in reversed(node.children))
    labels = [_label(n) for n in nodes]
    out = [Counter(labels)]
    for _ in range(depth):
        labels = [_digest(labels[i] + "(" + ",".join(labels[c] for c in kids[i]) + ")") for i in range(len(nodes))]
        out.append(Counter(labels))
    return tuple(out)


class Vocabulary:
    """Label -> column, for the labels of trees added as rows; other trees' rows keep only these
    columns (a label no row holds adds nothing to a dot product with the rows)."""

    def __init__(self) -> None:
        self.columns: dict[str, int] = {}

    def add(self, counts: Counter[str]) -> None:
        for label in counts:
            self.columns.setdefault(label, len(self.columns))

    def sparse(self, bags: Sequence[Counter[str]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(row, column, count) of every known label of every bag; columns sorted, rows in order within."""
        rows, cols, vals = [], [], []
        for r, bag in enumerate(bags):
            for label, n in bag.items():
                c = self.columns.get(label)
                if c is not None:
                    rows.append(r)
                    cols.append(c)
                    vals.append(n)
        row, col, val = np.array(rows, np.int64), np.array(cols, np.int64), np.array(vals, np.float64)
        order = np.lexsort((row, col))
        return row[order], col[order], val[order]


def dots(a: Sequence[Counter[str]], b: Sequence[Counter[str]], vocab: Vocabulary) -> np.ndarray:
    """The matrix of dot products ``a[i] . b[j]`` of label counts (``len(a) x len(b)``, exact).

    A sparse product by joining on labels: every pair of entries that share a column adds
    count * count to its cell. ``vocab`` must hold every label of ``b`` (or the products miss them).
    """
    out = np.zeros((len(a), len(b)))
    if not a or not b:
        return out
    ra, ca, va = vocab.sparse(a)
    rb, cb, vb = vocab.sparse(b)
    start, end = np.searchsorted(cb, ca, "left"), np.searchsorted(cb, ca, "right")
    lengths = end - start
    total = int(lengths.sum())
    if total == 0:
        return out
    first = np.repeat(np.cumsum(lengths) - lengths, lengths)
    pos = np.arange(total) - first + np.repeat(start, lengths)
    cell = np.repeat(ra, lengths) * len(b) + rb[pos]
    weight = np.repeat(va, lengths) * vb[pos]
    return np.bincount(cell, weights=weight, minlength=len(a) * len(b)).reshape(len(a), len(b))


def norms(bags: Sequence[Counter[str]]) -> np.ndarray:
    """Each bag's squared norm (its dot product with itself), over all its labels."""
    return np.array([float(sum(n * n for n in bag.values())) for bag in bags])


def kernels(a: Sequence[Features], b: Sequence[Features], depths: Sequence[int]) -> dict[int, np.ndarray]:
    """The normalised WL kernel of each depth in ``depths`` between two lists of features: ``len(a) x
    len(b)`` matrices, exactly 1 between identical trees, in [0, 1] always. Features must have at
    least ``max(depths) + 1`` levels."""
    raw = np.zeros((len(a), len(b)))
    na, nb = np.zeros(len(a)), np.zeros(len(b))
    out = {}
    for t in range(max(depths) + 1):
        vocab = Vocabulary()
        for f in b:
            vocab.add(f[t])
        raw += dots([f[t] for f in a], [f[t] for f in b], vocab)
        na += norms([f[t] for f in a])
        nb += norms([f[t] for f in b])
        if t in depths:
            out[t] = raw / np.sqrt(na[:, None] * nb[None, :])  # sqrt of a square is exact: the diagonal is 1.0
    return out


def kernel(a: Sequence[Features], b: Sequence[Features], depth: int) -> np.ndarray:
    """The normalised WL kernel of one depth (``kernels`` of that depth alone)."""
    return kernels(a, b, (depth,))[depth]
