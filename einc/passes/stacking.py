"""The stacked form of a branch block, and the builder that writes it into the graph.

NOTE: [Stacked values] inside a batched branch block every value is either *shared*, the
same tensor for every branch (the block's input after a clone, and whatever weight-free ops
make of it, computed once), or *stacked*: the b branches' tensors along a new axis 1, right
after the batch, (B, b, ...). Dimension arguments of per-sample ops shift by one, stacked
weights carry the branch axis first, and a shared operand of a broadcasting op gets a
unit axis (unsqueeze(1)). New nodes record the per-branch per-sample shape in
``meta[STACKED] = (b, shape)``; the passes read it where they read ``meta[FEATURE]``.

einc.passes.horizontal finds the blocks and drives a ``Builder``; einc.passes.batching_rules
says, per torch target, how one op of b branches becomes one op on stacked values.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.fx as fx
import torch.nn as nn

from ..meta import BATCHED, BRANCH, PATH, STACKED
from .cost import CostModel
from .graph import shape_of
from .provenance import Cat, Recipe, Reshape, Same, take

__all__ = ["Block", "Builder", "Refuse", "Value", "shared", "shift"]


class Refuse(Exception):
    """The block is not batched (an op without a batched form, or a layout not worth it)."""


Shape = tuple[int, ...]


@dataclass
class Value:
    """A block's value in stacked form."""

    kind: Literal["shared", "stacked", "done"]  # done: aggregated already (the block's result)
    node: fx.Node
    shape: Shape | None  # per sample and per branch, batch excluded
    tuple_: bool = False  # a tuple of tensors (torch.chunk's output)


@dataclass
class Block:
    """A branching module's b branches and the aggregation that joins them."""

    kind: Literal["cat", "add"]
    top: fx.Node  # the node holding the aggregate
    nodes: list[fx.Node]  # every node of the aggregation
    outputs: list[fx.Node]  # the branches' results, in branch order
    consumers: list[fx.Node]  # the aggregation node reading each result
    dim: int | None = None  # concatenation dim
    regions: list[list[fx.Node]] = field(default_factory=list)  # each branch's nodes, aligned


@dataclass
class _Pending:
    """What a batched block changes in the module, applied only once every node is built."""

    modules: list[tuple[str, nn.Module]] = field(default_factory=list)
    params: list[tuple[str, nn.Parameter, str]] = field(default_factory=list)  # name, value, init source
    recipes: list[tuple[str, Callable[[], Recipe]]] = field(default_factory=list)
    old_modules: list[str] = field(default_factory=list)
    old_params: list[str] = field(default_factory=list)
    names: set[str] = field(default_factory=set)


def shift(d: Any, rank: int | None, negative: bool = True) -> int:
    """A dim of a per-branch tensor (batch first, ``rank`` dims) as a dim of the stacked one.

    A negative dim counts from the end, which the branch axis does not change: it is kept
    (``softmax(dim=-1)`` stays readable) unless ``negative`` is false.
    """
    if type(d) is not int:
        raise Refuse
    if d < 0:
        if rank is None or d < 1 - rank:
            raise Refuse  # the batch dimension, or unknown
        if negative:
            return d
        d += rank
    if d == 0 or (rank is not None and d >= rank):
        raise Refuse  # the batch dimension, or out of range
    return d + 1


class Builder:
    """Writes one block's stacked form before its aggregation; module changes wait in ``todo``."""

    def __init__(self, gm: fx.GraphModule, block: Block, cost: CostModel):
        self.gm, self.graph, self.block, self.cost = gm, gm.graph, block, cost
        self.b = len(block.regions)
        self.modules = dict(gm.named_modules())
        self.lifted: dict[fx.Node, fx.Node] = {}
        self.created: list[fx.Node] = []
        self.todo = _Pending()

    # -- nodes

    def node(self, op: str, target: Any, args: Sequence[Any], kwargs: dict[str, Any] | None = None,
             like: fx.Node | None = None, shape: Shape | None = None) -> fx.Node:
        n = self.graph.create_node(op, target, tuple(args), dict(kwargs or {}))
        model = like or self.block.top
        n.meta[PATH] = model.meta.get(PATH, ())
        n.meta[BRANCH] = self.block.top.meta.get(BRANCH, ())  # the stacked form runs outside the fork
        n.meta[BATCHED] = self.b
        if shape is not None:
            n.meta[STACKED] = (self.b, tuple(shape))
        self.created.append(n)
        return n

    def method(self, name: str, x: fx.Node, *args: Any, like: fx.Node | None = None,
               shape: Shape | None = None) -> fx.Node:
        if name == "movedim" and len(args) == 2 and args[0] == args[1]:
            return x  # no move
        if (name == "flatten" and len(args) == 2 and x in self.created and x.op == "call_method"
                and x.target == "unflatten" and type(args[0]) is int and args[1] == args[0] + 1
                and x.args[1] == args[0] and isinstance(x.args[2], tuple) and len(x.args[2]) == 2
                and isinstance(x.args[0], fx.Node)):
            return x.args[0]  # flattening what was just unflattened: the tensor itself
        return self.node("call_method", name, (x, *args), like=like, shape=shape)

    def function(self, fn: Callable[..., Any], *args: Any, like: fx.Node | None = None,
                 shape: Shape | None = None, **kwargs: Any) -> fx.Node:
        return self.node("call_function", fn, args, kwargs, like=like, shape=shape)

    def stacked(self, node: fx.Node, shape: Shape | None, tuple_: bool = False) -> Value:
        if shape is not None and not tuple_ and node in self.created:
            node.meta[STACKED] = (self.b, tuple(shape))
        return Value("stacked", node, shape, tuple_)

    def lift(self, v: Value) -> fx.Node:
        """A shared value as an operand broadcasting against stacked ones: a unit branch axis."""
        if v.kind == "stacked":
            return v.node
        if v.node not in self.lifted:
            self.lifted[v.node] = self.method("unsqueeze", v.node, 1, like=v.node)
        return self.lifted[v.node]

    def expand(self, v: Value) -> fx.Node:
        """A shared value repeated on every branch (where broadcasting is not enough)."""
        if v.kind == "stacked":
            return v.node
        if v.shape is None:
            raise Refuse
        return self.method("expand", self.lift(v), -1, self.b, *[-1] * len(v.shape), like=v.node,
                           shape=v.shape)

    def drop_unused(self) -> None:
        """Erase the nodes made but bypassed (a flatten undoing an unflatten)."""
        for n in reversed(self.created):
            if not n.users:
                self.graph.erase_node(n)

    # -- weights

    def replace_modules(self, targets: list[str], new: nn.Module, stacked: tuple[str, ...],
                        same: tuple[str, ...] = ()) -> None:
        """``new`` takes the first target's name; its entries concatenate the b modules' ones."""
        name = targets[0]
        self.todo.modules.append((name, new))
        self.todo.old_modules += targets

        def parts(attr: str) -> tuple[Recipe, ...]:
            return tuple(take(self.gm, f"{t}.{attr}") for t in targets)

        def same_parts(attr: str) -> Callable[[], Recipe]:
            return lambda: Same(parts(attr))

        def stacked_parts(attr: str) -> Callable[[], Recipe]:
            return lambda: Cat(parts(attr), 0)

        for attr in stacked + same:
            if getattr(new, attr, None) is not None:
                make = same_parts(attr) if attr in same else stacked_parts(attr)
                self.todo.recipes.append((f"{name}.{attr}", make))

    def new_param(self, name: str, parts: Sequence[torch.Tensor], unit: Shape, init: str,
                  keys: list[str], like: fx.Node, raw: bool = False, dim: int = 0) -> fx.Node:
        """A parameter concatenating ``parts``, each reshaped to ``unit``, along ``dim``.

        ``init`` is its initialisation's source for einc.emit, with ``{}`` for the shape (``raw``)
        or for ``torch.empty(shape)``.
        """
        base, i = name, 1
        while hasattr(self.gm, name) or name in self.todo.names:
            name, i = f"{base}_{i}", i + 1
        self.todo.names.add(name)
        value = nn.Parameter(torch.cat([p.detach().reshape(unit) for p in parts], dim=dim),
                             requires_grad=parts[0].requires_grad)
        shape = ", ".join(map(str, value.shape))
        source = init.format(shape) if raw else init.format(f"torch.empty({shape})")
        self.todo.params.append((name, value, source))
        self.todo.recipes.append(
            (name, lambda: Cat(tuple(Reshape(take(self.gm, k), unit) for k in keys), dim)))
        return self.node("get_attr", name, (), like=like)

    def module_of(self, n: fx.Node) -> nn.Module:
        assert isinstance(n.target, str)
        return self.modules[n.target]


def shared(a: fx.Node) -> Value:
    """An outside value, the same for every branch."""
    return Value("shared", a, shape_of(a))
