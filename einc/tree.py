"""The one derivation-tree type: what an architecture *is*, for any .ein grammar.

* ``Expansion(head, label, children)``: nonterminal ``head`` expanded by the alternative
  named ``label`` (None for an unlabelled one); one child per body element.
* ``Leaf(op, args)``: an operation with its hyperparameters, sorted by name.
* ``Fork(children, repeated)``: a branch block; one child per branch, or, when ``repeated``,
  one child standing for all ``copies`` branches (same structure, separate weights).

Trees are frozen and compare by structure; ``span`` (where a node was written) is left out of
comparisons, so ``parse(show(t)) == t`` is plain equality. The alternative a node used is not
stored: it is recovered from the grammar, so a tree stays meaningful as text.

Equality and hashing walk the tree with an explicit stack, and ``deep`` runs a recursive
generator without Python recursion: a sampler with a large ``max_depth`` makes trees deeper
than Python's recursion limit, and every stage must still handle them.
"""

from __future__ import annotations

import gc
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, overload

from .errors import Span
from .ops import Args


@dataclass(frozen=True, slots=True)
class Leaf:
    op: str
    args: Args = ()
    span: Span | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True, eq=False)
class Fork:
    children: tuple[Node, ...]
    repeated: bool = False
    copies: int = 0  # number of branches; equals len(children) unless repeated
    span: Span | None = field(default=None, compare=False, repr=False)

    def __eq__(self, other: object) -> bool:
        return _equal(self, other) if isinstance(other, (Fork, Expansion, Leaf)) else NotImplemented

    def __hash__(self) -> int:
        return _hash(self)


@dataclass(frozen=True, slots=True, eq=False)
class Expansion:
    head: str
    label: str | None
    children: tuple[Node, ...]
    span: Span | None = field(default=None, compare=False, repr=False)

    def __eq__(self, other: object) -> bool:
        return _equal(self, other) if isinstance(other, (Fork, Expansion, Leaf)) else NotImplemented

    def __hash__(self) -> int:
        return _hash(self)


Node = Expansion | Leaf | Fork
Path = tuple[int, ...]


class Trail:
    """A path grown one child at a time in O(1), for the walks that label every node (infer, lower).

    Making ``path + (i,)`` at every node costs O(depth) each: on an 8,000-op chain, time and memory
    quadratic in the network's size. A trail shares its parent's; ``trail.path`` makes the tuple
    when asked (cached). A trail iterates, indexes, compares and hashes as that tuple, so code that
    reads paths (``einc.errors.format_path``, ``at``) takes either. Immutable: copies are itself.
    """

    __slots__ = ("up", "index", "depth", "_path")

    def __init__(self, up: Trail | None = None, index: int = 0):
        self.up, self.index = up, index
        self.depth: int = 0 if up is None else up.depth + 1
        self._path: Path | None = () if up is None else None

    @property
    def path(self) -> Path:
        if self._path is None:
            steps, t = [], self
            while t._path is None:
                steps.append(t.index)
                t = t.up  # type: ignore[assignment]  # the root has a path
            self._path = t._path + tuple(reversed(steps))
        return self._path

    def __len__(self) -> int:
        return self.depth

    def __iter__(self) -> Iterator[int]:
        return iter(self.path)

    def __getitem__(self, i):
        return self.path[i]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, tuple):
            return self.path == other
        if not isinstance(other, Trail):
            return NotImplemented
        a: Trail | None = self
        b: Trail | None = other
        if self.depth != other.depth:
            return False
        while a is not b:
            assert a is not None and b is not None  # same depth: both reach a root together
            if a.index != b.index:
                return False
            a, b = a.up, b.up
        return True

    def __hash__(self) -> int:
        return hash(self.path)

    def __repr__(self) -> str:
        return f"Trail{self.path}"

    def __copy__(self) -> Trail:
        return self

    def __deepcopy__(self, memo: dict) -> Trail:
        return self

    def __reduce__(self):
        return (_trail, (self.path,))


def _trail(path: Path) -> Trail:
    t = Trail()
    for i in path:
        t = Trail(t, i)
    return t


def _equal(a: Node, b: Node) -> bool:
    """Structural equality (spans ignored), by an explicit stack."""
    stack = [(a, b)]
    while stack:
        x, y = stack.pop()
        if x is y:
            continue
        if type(x) is not type(y):
            return False
        if type(x) is Leaf:
            if x != y:
                return False
            continue
        if type(x) is Expansion:
            if x.head != y.head or x.label != y.label:  # type: ignore[union-attr]
                return False
        elif x.repeated != y.repeated or x.copies != y.copies:  # type: ignore[union-attr]
            return False
        if len(x.children) != len(y.children):  # type: ignore[union-attr]
            return False
        stack.extend(zip(x.children, y.children, strict=True))  # type: ignore[union-attr]
    return True


def _hash(root: Node) -> int:
    """A hash consistent with ``_equal``, computed children first by an explicit stack."""
    done: dict[int, int] = {}
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, ready = stack.pop()
        if type(node) is Leaf or id(node) in done:
            continue
        kids = node.children  # type: ignore[union-attr]
        if ready:
            sub = tuple(hash(c) if type(c) is Leaf else done[id(c)] for c in kids)
            key = (node.head, node.label) if type(node) is Expansion else (node.repeated, node.copies)  # type: ignore[union-attr]
            done[id(node)] = hash((type(node).__name__, key, sub))
        else:
            stack.append((node, True))
            stack.extend((c, False) for c in kids if type(c) is not Leaf)
    return done[id(root)]


def steps(node: Node, trail: Trail) -> Iterator[tuple[Leaf | Fork, Trail]]:
    """The leaves and forks under ``node`` in the order they run, each with its trail: sequences of
    expansions are flattened by an explicit stack, so a long chain costs no recursion (infer, lower)."""
    todo: list[tuple[Node, Trail]] = [(node, trail)]
    while todo:
        node, trail = todo.pop()
        if isinstance(node, Expansion):
            kids = node.children
            todo.extend((kids[i], Trail(trail, i)) for i in range(len(kids) - 1, -1, -1))
        else:
            yield node, trail


def deep(gen: Generator[Any, Any, Any]) -> Any:
    """Run a recursive generator function without Python recursion.

    Inside ``gen`` a recursive call is written ``result = yield f(args)`` where ``f`` is itself
    such a generator function; exceptions travel up the explicit stack as they would through
    calls, so ``try: x = yield f(...) except E:`` works.
    """
    stack = [gen]
    value: Any = None
    error: BaseException | None = None
    while True:
        top = stack[-1]
        try:
            if error is not None:
                e, error = error, None
                sub = top.throw(e)
            else:
                sub = top.send(value)
        except StopIteration as stop:
            stack.pop()
            if not stack:
                return stop.value
            value = stop.value
            continue
        except BaseException as e:  # noqa: B036 - re-raised in the caller's frame
            stack.pop()
            if not stack:
                raise
            error = e
            continue
        stack.append(sub)
        value = None


@contextmanager
def gc_paused() -> Iterator[None]:
    """Python's cycle collector off while a stage builds a large structure; on again after.

    A full collection scans every object in the process, and it runs each time the objects that
    survive grow by a quarter: a stage that builds a big structure (a parse's suspended
    generators and tree, a graph's nodes) sets off several. On an 8,000-op chain they were two
    thirds of the parse's time. What the stages leave as cyclic garbage (an error's traceback,
    erased graph nodes) waits for the next collection after the stage.
    """
    if not gc.isenabled():  # paused already (a stage inside another) or by the program
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def walk(tree: Node) -> Iterator[tuple[Path, Node]]:
    """Every node with its path (child indices from the root), parents first; iterative."""
    stack: list[tuple[Path, Node]] = [((), tree)]
    while stack:
        path, node = stack.pop()
        yield path, node
        if not isinstance(node, Leaf):
            for i in range(len(node.children) - 1, -1, -1):
                stack.append((path + (i,), node.children[i]))


def at(tree: Node, path: Path) -> Node:
    node = tree
    for i in path:
        node = node.children[i]  # type: ignore[union-attr]
    return node


@overload
def replace_at(tree: Expansion, path: Path, new: Expansion) -> Expansion: ...
@overload
def replace_at(tree: Node, path: Path, new: Node) -> Node: ...
def replace_at(tree: Node, path: Path, new: Node) -> Node:
    """A copy of ``tree`` with the subtree at ``path`` replaced; shares everything else."""
    if not path:
        return new
    spine = [tree]
    for i in path[:-1]:
        spine.append(spine[-1].children[i])  # type: ignore[union-attr]
    for parent, i in zip(reversed(spine), reversed(path), strict=True):
        kids = list(parent.children)  # type: ignore[union-attr]
        kids[i] = new
        new = _with_children(parent, tuple(kids))
    return new


def _with_children(node: Node, children: tuple[Node, ...]) -> Node:
    if isinstance(node, Expansion):
        return Expansion(node.head, node.label, children, node.span)
    assert isinstance(node, Fork)
    return Fork(children, node.repeated, node.copies, node.span)


@dataclass(frozen=True)
class Counts:
    """Derivation size as in the paper's Table 6, and the network's operation count."""

    nonterminals: int
    terminals: int
    network_ops: int  # leaves counted once per repeated copy
    depth: int
    branching: tuple[int, ...]  # the factor of every fork


def counts(tree: Node) -> Counts:
    nt = t = ops = depth = 0
    factors = []
    stack: list[tuple[Node, int, int]] = [(tree, 1, 1)]
    while stack:
        node, mult, d = stack.pop()
        depth = max(depth, d)
        if isinstance(node, Leaf):
            t += 1
            ops += mult
            continue
        if isinstance(node, Expansion):
            nt += 1
        else:
            factors.append(node.copies)
            if node.repeated:
                mult *= node.copies
        for c in node.children:
            stack.append((c, mult, d + 1))
    return Counts(nt, t, ops, depth, tuple(factors))
