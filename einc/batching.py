"""Horizontal fusion: a branching module with b equal branches, computed once on stacked values.

The pass ``batch_branches`` of einc.fusion (see there for the whole stage). It reads the
graph einc.lower writes, after einc.passes: the branches of a block are found from its
aggregation (``torch.cat`` of b values, or einc's chain of additions from one ``add``),
matched node for node, and rewritten in the stacked form of NOTE: [Stacked values]; the
weights it moves are recorded with einc.packing, so state dicts still convert.
"""

from __future__ import annotations

import operator
import re
import string
from dataclasses import dataclass, field
from math import prod, sqrt
from typing import Any, Callable

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from .packing import Cat, Recipe, Reshape, Same, record, take
from .passes import _finish

__all__ = ["batch_branches"]


# NOTE: [Stacked values] inside a batched branch block every value is either *shared*, the
# same tensor for every branch (the block's input after a clone, and whatever weight-free ops
# make of it, computed once), or *stacked*: the b branches' tensors along a new axis 1, right
# after the batch, (B, b, ...). Dimension arguments of per-sample ops shift by one, stacked
# weights carry the branch axis first, and a shared operand of a broadcasting op gets a
# unit axis (unsqueeze(1)). New nodes record the per-branch per-sample shape in
# ``meta["einc_stacked"] = (b, shape)``; the passes read it where they read "einc_feature".


# NOTE: [GEMM shapes] CPU matrix products are not monotonic in their shape (one thread, torch
# 2.13, measured in bench/bench_fusion.py's setting): one (M, K) @ (K, b*N) product beats b
# (M, K) @ (K, N) ones by up to 1.5x while b*N stays within about a thousand and K is not tiny,
# but loses up to 3x beyond (K = 4, b*N = 1024: 14 ms against 4.5 for M = 2048, forward and
# backward); a batched product (bmm) of b large ones runs up to 1.5x slower than b separate
# ones. Small products are dominated by per-op overhead, where fewer ops always win. So wide
# and batched products are made only where small or known good; otherwise the block (or the
# linears) stay as they were.
_GEMM_FLOPS = 1 << 18  # per sample and branch: "small"


def _wide_ok(k: int, width: int) -> bool:
    """One (M, k) @ (k, width) product is no slower than the products it replaces."""
    return width <= 128 or (k >= 16 and width <= 1024)


class _Refuse(Exception):
    """The block is not batched (an op without a batched form, or a layout not worth it)."""


@dataclass
class _Val:
    kind: str  # "shared", "stacked", or "done" (already aggregated: the block's result)
    node: fx.Node
    shape: tuple[int, ...] | None  # per sample and per branch, batch excluded
    tuple_: bool = False  # a tuple of tensors (torch.chunk's output)


@dataclass
class _Agg:
    kind: str  # "cat" or "add"
    top: fx.Node  # the node holding the aggregate
    nodes: list[fx.Node]  # every node of the aggregation
    outputs: list[fx.Node]  # the branches' results, in branch order
    consumers: list[fx.Node]  # the aggregation node reading each result
    dim: int | None = None


# ---------------------------------------------------------------- batch_branches


def batch_branches(gm: fx.GraphModule) -> int:
    """Compute each branching module with b equal branches as one stacked computation.

    A candidate is an aggregation (``torch.cat`` of b values, or einc's chain of b - 1
    additions from one ``add`` leaf); its branches are the nodes each aggregated value needs
    that the others do not. They are batched when they are disjoint, read nothing of each
    other, are used only by the aggregation, and match node for node (same ops, same module
    configurations, same constants, shared inputs in the same places); the block's input is
    shared (a clone) or split by ``torch.chunk`` (a group-dim). Outer blocks go first (inner
    ones are batched with them). A block holding an op without a batched form is left alone,
    as is one whose convolutions would become grouped ones (slower than separate ones on CPU).
    """
    count = 0
    index = {n: i for i, n in enumerate(gm.graph.nodes)}
    calls = _call_counts(gm)
    for agg in _aggregations(gm):
        if agg.top not in index:  # inside a block batched already
            continue
        regions = _match(gm, agg, index, calls)
        if regions is not None and _Batcher(gm, agg, regions, index).run():
            count += 1
            # blocks still to try lie outside this one (earlier in the graph): their nodes stay
            index = {n: i for i, n in enumerate(gm.graph.nodes)}
            calls = _call_counts(gm)
    _finish(gm)
    return count


def _call_counts(gm: fx.GraphModule) -> dict[str, int]:
    calls: dict[str, int] = {}
    for n in gm.graph.nodes:
        if n.op in ("call_module", "get_attr"):
            calls[n.target] = calls.get(n.target, 0) + 1
    return calls


def _aggregations(gm: fx.GraphModule) -> list[_Agg]:
    """Candidate aggregations, last first (an outer block before the blocks inside it)."""
    out = []
    for n in reversed(gm.graph.nodes):
        if n.meta.get("einc_batched"):
            continue
        if n.op == "call_function" and n.target is torch.cat:
            items = n.args[0] if n.args else None
            dim = n.kwargs.get("dim", n.args[1] if len(n.args) > 1 else 0)
            if (isinstance(items, (list, tuple)) and len(items) >= 2 and type(dim) is int
                    and all(isinstance(a, fx.Node) for a in items) and len(n.args) + len(n.kwargs) <= 2):
                out.append(_Agg("cat", n, [n], list(items), [n] * len(items), dim))
        elif _is_add(n) and not any(_continues(n, u) for u in n.users):
            chain, outputs, consumers = [n], [n.args[1]], [n]
            cur = n
            while _is_add(cur.args[0]) and _continues(cur.args[0], cur):
                cur = cur.args[0]
                chain.append(cur)
                outputs.append(cur.args[1])
                consumers.append(cur)
            outputs.append(cur.args[0])
            consumers.append(cur)
            out.append(_Agg("add", n, chain, outputs[::-1], consumers[::-1]))
    return out


def _is_add(n: Any) -> bool:
    return (isinstance(n, fx.Node) and n.op == "call_function" and n.target is operator.add and not n.kwargs
            and len(n.args) == 2 and all(isinstance(a, fx.Node) for a in n.args))


def _continues(inner: fx.Node, outer: fx.Node) -> bool:
    """``outer = inner + x`` adds the next branch of the same ``add`` leaf (einc.lower's chain)."""
    path = inner.meta.get("einc_path")
    return (_is_add(outer) and outer.args[0] is inner and len(inner.users) == 1 and path is not None
            and outer.meta.get("einc_path") == path)


def _ancestors(n: fx.Node) -> set[fx.Node]:
    seen = {n}
    stack = [n]
    while stack:
        for a in stack.pop().all_input_nodes:
            if a not in seen:
                seen.add(a)
                stack.append(a)
    return seen


def _match(gm: fx.GraphModule, agg: _Agg, index: dict[fx.Node, int],
           calls: dict[str, int]) -> list[list[fx.Node]] | None:
    """The branches' nodes, aligned (graph order within each), or None if not batchable."""
    outs = agg.outputs
    b = len(outs)
    if len(set(outs)) != b or len({(o.op, o.target if o.op.startswith("call_f") else 0) for o in outs}) != 1:
        return None
    anc = [_ancestors(o) for o in outs]
    common = set.intersection(*anc)
    regions = [sorted(a - common, key=index.__getitem__) for a in anc]
    size = len(regions[0])
    if size == 0 or any(len(r) != size for r in regions) or len(set().union(*regions)) != b * size:
        return None
    modules = dict(gm.named_modules())
    sigs = []
    for i, region in enumerate(regions):
        members = set(region)
        pos = {n: k for k, n in enumerate(region)}
        for n in region:
            if n.op in ("placeholder", "output") or n.meta.get("einc_batched"):
                return None
            if n is outs[i]:
                if list(n.users) != [agg.consumers[i]] or _uses(agg.consumers[i], n) != 1:
                    return None
            elif any(u not in members for u in n.users):
                return None
            if n.op in ("call_module", "get_attr") and calls.get(n.target) != 1:
                return None  # a weight used twice cannot be stacked once
        try:
            sigs.append([_signature(n, pos, modules, gm) for n in region])
        except _Refuse:
            return None
    if any(s != sigs[0] for s in sigs[1:]) or len({r.index(o) for r, o in zip(regions, outs)}) != 1:
        return None
    return regions


def _uses(user: fx.Node, n: fx.Node) -> int:
    count = 0
    for a in _flat(user.args) + _flat(tuple(user.kwargs.values())):
        count += a is n
    return count


def _flat(v: Any) -> list:
    if isinstance(v, (list, tuple)):
        return [x for e in v for x in _flat(e)]
    return [v]


def _is_split(n: fx.Node, pos: dict[fx.Node, int]) -> bool:
    """``n`` takes one piece of a ``torch.chunk`` made outside the branches (a group-dim)."""
    return (n.op == "call_function" and n.target is operator.getitem and isinstance(n.args[0], fx.Node)
            and n.args[0] not in pos and n.args[0].op == "call_function" and n.args[0].target is torch.chunk)


def _signature(n: fx.Node, pos: dict[fx.Node, int], modules: dict[str, nn.Module],
               gm: fx.GraphModule) -> tuple:
    def arg(a: Any) -> Any:
        if isinstance(a, fx.Node):
            return ("branch", pos[a]) if a in pos else ("outside", a)
        if isinstance(a, (list, tuple)):
            return (type(a).__name__, tuple(arg(e) for e in a))
        if isinstance(a, dict):
            return ("dict", tuple((k, arg(v)) for k, v in a.items()))
        if isinstance(a, slice):
            return ("slice", arg(a.start), arg(a.stop), arg(a.step))
        return (type(a).__name__, a)

    if n.op == "call_module":
        target: Any = _module_key(modules[n.target])
    elif n.op == "get_attr":
        p = getattr(gm, n.target)
        if not isinstance(p, nn.Parameter):
            raise _Refuse
        target = ("parameter", tuple(p.shape), p.dtype, p.requires_grad)
    else:
        target = n.target
    if _is_split(n, pos):
        return (n.op, target, arg(n.args[0]), "split")
    return (n.op, target, arg(n.args), arg(n.kwargs))


def _module_key(m: nn.Module) -> tuple:
    t = type(m)
    grads = tuple(p.requires_grad for p in m.parameters())
    dtypes = tuple(p.dtype for p in m.parameters())
    if t is nn.Linear:
        config: tuple = (m.in_features, m.out_features, m.bias is not None)
    elif t is nn.Conv2d:
        config = (m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation, m.groups,
                  m.bias is not None, m.padding_mode)
    elif t is nn.BatchNorm2d:
        config = (m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats)
    elif t is nn.LayerNorm:
        config = (tuple(m.normalized_shape), m.eps, m.elementwise_affine,
                  getattr(m, "bias", None) is not None)
    elif t is nn.Identity:
        config = ()
    else:
        raise _Refuse
    return (t, config, grads, dtypes, m.training)


_BINARY = {operator.add, operator.sub, operator.mul, operator.truediv, torch.add, torch.sub, torch.mul,
           torch.div, torch.matmul}
_UNARY = {F.leaky_relu, F.relu, torch.relu, torch.sigmoid, torch.tanh, F.gelu, F.silu, torch.exp, torch.neg}
_SOFTMAX = {torch.softmax, F.softmax, torch.log_softmax, F.log_softmax}
_METHODS = {"permute", "transpose", "reshape", "view", "contiguous", "mean", "sum"}
_STRUCTURAL = (torch.chunk, operator.getitem, torch.cat, F.unfold)


@dataclass
class _Pending:
    """What a batched block changes in the module, applied only once every node is built."""

    modules: list[tuple[str, nn.Module]] = field(default_factory=list)
    params: list[tuple[str, nn.Parameter, str]] = field(default_factory=list)  # name, value, init source
    recipes: list[tuple[str, Callable[[], Recipe]]] = field(default_factory=list)
    old_modules: list[str] = field(default_factory=list)
    old_params: list[str] = field(default_factory=list)
    names: set[str] = field(default_factory=set)


class _Batcher:
    def __init__(self, gm: fx.GraphModule, agg: _Agg, regions: list[list[fx.Node]],
                 index: dict[fx.Node, int]):
        self.gm, self.graph, self.agg, self.regions, self.index = gm, gm.graph, agg, regions, index
        self.b = len(regions)
        self.modules = dict(gm.named_modules())
        self.rep: dict[fx.Node, _Val] = {}
        self.lifted: dict[fx.Node, fx.Node] = {}
        self.created: list[fx.Node] = []
        self.todo = _Pending()

    def run(self) -> bool:
        try:
            with self.graph.inserting_before(self.agg.top):
                for nodes in zip(*self.regions):
                    self.rep[nodes[0]] = self.value(nodes)
                out = self.aggregate(self.rep[self.agg.outputs[0]])
        except _Refuse:
            for n in reversed(self.created):
                self.graph.erase_node(n)
            return False
        self.commit(out)
        return True

    # -- building nodes

    def node(self, op: str, target: Any, args: tuple, kwargs: dict | None = None, like: fx.Node | None = None,
             shape: tuple[int, ...] | None = None) -> fx.Node:
        n = self.graph.create_node(op, target, tuple(args), dict(kwargs or {}))
        n.meta["einc_path"] = (like or self.agg.top).meta.get("einc_path", ())
        n.meta["einc_batched"] = self.b
        if shape is not None:
            n.meta["einc_stacked"] = (self.b, tuple(shape))
        self.created.append(n)
        return n

    def method(self, name: str, x: fx.Node, *args: Any, like: fx.Node | None = None, shape=None) -> fx.Node:
        return self.node("call_method", name, (x, *args), like=like, shape=shape)

    def function(self, fn: Callable, *args: Any, like: fx.Node | None = None, shape=None,
                 **kwargs: Any) -> fx.Node:
        return self.node("call_function", fn, args, kwargs, like=like, shape=shape)

    def stacked(self, node: fx.Node, shape: tuple[int, ...] | None, tuple_: bool = False) -> _Val:
        if shape is not None and not tuple_:
            node.meta["einc_stacked"] = (self.b, tuple(shape))
        return _Val("stacked", node, shape, tuple_)

    def lift(self, v: _Val) -> fx.Node:
        """A shared value as an operand broadcasting against stacked ones: a unit branch axis."""
        if v.kind == "stacked":
            return v.node
        if v.node not in self.lifted:
            self.lifted[v.node] = self.method("unsqueeze", v.node, 1, like=v.node)
        return self.lifted[v.node]

    def expand(self, v: _Val) -> fx.Node:
        """A shared value repeated on every branch (where broadcasting is not enough)."""
        if v.kind == "stacked":
            return v.node
        if v.shape is None:
            raise _Refuse
        return self.method("expand", self.lift(v), -1, self.b, *[-1] * len(v.shape), like=v.node,
                           shape=v.shape)

    def arg(self, a: Any) -> Any:
        if isinstance(a, fx.Node):
            return self.rep.get(a) or _Val("shared", a, _shape(a))
        if isinstance(a, (list, tuple)):
            return type(a)(self.arg(e) for e in a)
        if isinstance(a, dict):
            return {k: self.arg(v) for k, v in a.items()}
        return a

    # -- one aligned tuple of nodes (one per branch) -> its batched value

    def value(self, nodes: tuple[fx.Node, ...]) -> _Val:
        n = nodes[0]
        shape = _shape(n)
        if n.op == "get_attr":
            return self.parameter(nodes, shape)
        if _is_split(n, self.rep):
            return self.split(nodes, shape)
        args, kwargs = self.arg(n.args), self.arg(n.kwargs)
        vals = [v for v in _flat(args) + _flat(list(kwargs.values())) if isinstance(v, _Val)]
        shared = all(v.kind == "shared" for v in vals)
        if n.op == "call_module":
            m = self.modules[n.target]
            if type(m) is nn.Identity:
                return args[0]
            return self.module(nodes, m, args[0], shape)
        if not self.known(n):
            raise _Refuse
        if shared:  # the same weight-free op of the same input on every branch: compute it once
            new = self.node(n.op, n.target, _nodes(args), _nodes(kwargs), like=n)
            if "einc_feature" in n.meta:
                new.meta["einc_feature"] = n.meta["einc_feature"]
            return _Val("shared", new, shape, n.target is torch.chunk)
        return self.op(n, args, kwargs, shape)

    @staticmethod
    def known(n: fx.Node) -> bool:
        if n.op == "call_method":
            return n.target in _METHODS
        return n.op == "call_function" and (n.target in _BINARY or n.target in _UNARY or n.target in _SOFTMAX
                                            or n.target in _STRUCTURAL)

    def op(self, n: fx.Node, args: tuple, kwargs: dict, shape) -> _Val:
        """A weight-free op with at least one stacked operand."""
        t = n.target
        x = args[0]
        rank = len(x.shape) + 1 if isinstance(x, _Val) and x.shape is not None else None
        if n.op == "call_function":
            if t in _BINARY:
                if any(isinstance(v, _Val) for v in kwargs.values()):
                    raise _Refuse
                new = [self.lift(a) if isinstance(a, _Val) else a for a in args]
                return self.stacked(self.function(t, *new, like=n, **kwargs), shape)
            if t in _UNARY or t in _SOFTMAX:
                if x.kind != "stacked" or any(isinstance(a, _Val) for a in args[1:] + tuple(kwargs.values())):
                    raise _Refuse
                rest, kw = list(args[1:]), dict(kwargs)
                if t in _SOFTMAX:
                    if "dim" in kw:
                        kw["dim"] = _shift(kw["dim"], rank)
                    elif rest:
                        rest[0] = _shift(rest[0], rank)
                    else:
                        raise _Refuse  # softmax's implicit dim
                return self.stacked(self.function(t, x.node, *rest, like=n, **kw), shape)
            if t is torch.chunk:
                dim = kwargs.get("dim", args[2] if len(args) > 2 else 0)
                if x.kind != "stacked" or isinstance(args[1], _Val):
                    raise _Refuse
                pieces = self.function(torch.chunk, x.node, args[1], like=n, dim=_shift(dim, rank))
                return self.stacked(pieces, None, tuple_=True)
            if t is operator.getitem:
                if not (x.kind == "stacked" and x.tuple_ and type(args[1]) is int):
                    raise _Refuse
                return self.stacked(self.function(operator.getitem, x.node, args[1], like=n), shape)
            if t is torch.cat:
                dim = kwargs.get("dim", args[1] if len(args) > 1 else 0)
                items = args[0]
                if not isinstance(items, (list, tuple)) or not all(isinstance(v, _Val) for v in items):
                    raise _Refuse
                r = next((len(v.shape) + 1 for v in items if v.shape is not None), None)
                return self.stacked(self.function(torch.cat, [self.expand(v) for v in items], like=n,
                                                  dim=_shift(dim, r)), shape)
            if t is F.unfold:
                if x.kind != "stacked" or any(isinstance(a, _Val) for a in args[1:] + tuple(kwargs.values())):
                    raise _Refuse
                flat = self.method("flatten", x.node, 1, 2, like=n)
                cols = self.function(F.unfold, flat, *args[1:], like=n, **kwargs)
                return self.stacked(self.method("unflatten", cols, 1, (self.b, -1), like=n), None)
            raise _Refuse
        # call_method
        if not isinstance(x, _Val) or x.kind != "stacked" or any(
                isinstance(a, _Val) for a in args[1:] + tuple(kwargs.values())):
            raise _Refuse
        if t == "permute":
            dims = args[1] if len(args) == 2 and isinstance(args[1], (tuple, list)) else args[1:]
            if kwargs or not dims or not all(type(d) is int for d in dims) or dims[0] != 0:
                raise _Refuse
            new = (0, 1, *[_shift(d, rank) for d in dims[1:]])
            return self.stacked(self.method("permute", x.node, *new, like=n), shape)
        if t == "transpose":
            if kwargs or len(args) != 3:
                raise _Refuse
            return self.stacked(self.method("transpose", x.node, _shift(args[1], rank), _shift(args[2], rank),
                                            like=n), shape)
        if t in ("reshape", "view"):
            sizes = args[1] if len(args) == 2 and isinstance(args[1], (tuple, list)) else args[1:]
            if (kwargs or not sizes or not all(type(s) is int for s in sizes) or sizes[0] != -1
                    or -1 in sizes[1:]):
                raise _Refuse  # only per-sample reshapes: the batch as -1, every other size given
            return self.stacked(self.method(t, x.node, -1, self.b, *sizes[1:], like=n), shape)
        if t == "contiguous":
            return self.stacked(self.method("contiguous", x.node, like=n), shape)
        if t in ("mean", "sum"):
            dims = kwargs.get("dim", args[1] if len(args) > 1 else None)
            if dims is None:
                raise _Refuse
            if isinstance(dims, (tuple, list)):
                dims = tuple(_shift(d, rank) for d in dims)
            else:
                dims = _shift(dims, rank)
            kw = {k: v for k, v in kwargs.items() if k != "dim"}
            return self.stacked(self.node("call_method", t, (x.node, dims, *args[2:]), kw, like=n), shape)
        raise _Refuse

    def split(self, nodes: tuple[fx.Node, ...], shape) -> _Val:
        """b pieces of ``torch.chunk(x, b, dim=d)``, piece i on branch i: x with d unflattened."""
        chunk = nodes[0].args[0]
        x = chunk.args[0]
        dim = chunk.kwargs.get("dim", chunk.args[2] if len(chunk.args) > 2 else 0)
        chunks = chunk.args[1] if len(chunk.args) > 1 else chunk.kwargs.get("chunks")
        whole = _shape(x)
        if (chunks != self.b or [n.args[1] for n in nodes] != list(range(self.b)) or shape is None
                or whole is None or type(dim) is not int or not isinstance(x, fx.Node)):
            raise _Refuse
        d = _shift(dim, len(whole) + 1, negative=False) - 1  # dim of x, batch included
        if whole[d - 1] != self.b * shape[d - 1]:
            raise _Refuse  # unequal chunks
        parts = self.method("unflatten", x, d, (self.b, -1), like=nodes[0])
        return self.stacked(self.method("movedim", parts, d, 1, like=nodes[0]), shape)

    def parameter(self, nodes: tuple[fx.Node, ...], shape) -> _Val:
        """Per-branch tables (1, *s) broadcasting over the batch: one (1, b, *s) table."""
        n = nodes[0]
        ps = [getattr(self.gm, m.target) for m in nodes]
        if ps[0].dim() == 0 or ps[0].shape[0] != 1:
            raise _Refuse
        rest = tuple(ps[0].shape[1:])
        value = nn.Parameter(torch.cat([p.detach().unsqueeze(1) for p in ps], dim=1),
                             requires_grad=ps[0].requires_grad)
        name = n.target
        init = self.gm.meta.get("einc", {}).get("init", {}).get(name)
        self.todo.params.append((name, value, _init_like(init, tuple(value.shape))))
        targets = [m.target for m in nodes]
        self.todo.recipes.append((name, lambda: Cat(tuple(Reshape(take(self.gm, t), (1, 1, *rest))
                                                          for t in targets), 1)))
        self.todo.old_params += targets
        return self.stacked(self.node("get_attr", name, (), like=n), shape or rest)

    # -- modules with per-branch state

    def module(self, nodes: tuple[fx.Node, ...], m: nn.Module, x: _Val, shape) -> _Val:
        n = nodes[0]
        if len(n.args) != 1 or n.kwargs or not isinstance(x, _Val):
            raise _Refuse
        ms = [self.modules[k.target] for k in nodes]
        targets = [k.target for k in nodes]
        b = self.b
        if type(m) is nn.Linear:
            return self.linear(nodes, ms, x, shape)
        if type(m) is nn.Conv2d:
            if x.kind != "shared" or m.groups != 1:
                raise _Refuse  # b convolutions on b tensors would be one grouped one: slower on CPU
            wide = _like_conv(ms)
            self.replace_modules(targets, wide, ("weight", "bias"))
            y = self.node("call_module", n.target, (x.node,), like=n)
            return self.stacked(self.method("unflatten", y, 1, (b, m.out_channels), like=n), shape)
        if type(m) is nn.BatchNorm2d:  # b BatchNorms over C channels are one over b * C
            flat = (self.method("flatten", x.node, 1, 2, like=n) if x.kind == "stacked"
                    else self.method("repeat", x.node, 1, b, 1, 1, like=n))
            wide = _like_batchnorm(ms)
            self.replace_modules(targets, wide, ("weight", "bias", "running_mean", "running_var"),
                                 same=("num_batches_tracked",))
            y = self.node("call_module", n.target, (flat,), like=n)
            return self.stacked(self.method("unflatten", y, 1, (b, m.num_features), like=n), shape)
        if type(m) is nn.LayerNorm:  # normalise (once, if shared), then each branch's affine map
            ns = tuple(m.normalized_shape)
            y = self.function(F.layer_norm, x.node, ns, None, None, m.eps, like=n)
            if not m.elementwise_affine:
                return _Val(x.kind, y, shape) if x.kind == "shared" else self.stacked(y, shape)
            if shape is None:
                raise _Refuse
            y = self.lift(_Val(x.kind, y, shape)) if x.kind == "shared" else y
            unit = (1,) + (1,) * (len(shape) - len(ns)) + ns
            w = self.new_param(n.target + "_weight", [k.weight for k in ms], unit, "torch.ones({})",
                               [f"{t}.weight" for t in targets], like=n, raw=True)
            y = self.function(operator.mul, y, w, like=n)
            if getattr(m, "bias", None) is not None:
                bias = self.new_param(n.target + "_bias", [k.bias for k in ms], unit, "torch.zeros({})",
                                      [f"{t}.bias" for t in targets], like=n, raw=True)
                y = self.function(operator.add, y, bias, like=n)
            self.todo.old_modules += targets
            return self.stacked(y, shape)
        raise _Refuse

    def linear(self, nodes: tuple[fx.Node, ...], ms: list[nn.Linear], x: _Val, shape) -> _Val:
        """b linears, in the cheapest exact form for their input and place (see _GEMM_FLOPS)."""
        n, m, b = nodes[0], ms[0], self.b
        targets = [k.target for k in nodes]
        if shape is None:
            raise _Refuse
        rows = prod(shape[:-1])  # per sample
        small = 2 * rows * m.in_features * m.out_features <= _GEMM_FLOPS
        bound = f"{1 / sqrt(m.in_features)!r}"
        uniform = f"{{}}.uniform_(-{bound}, {bound})"  # nn.Linear's initialisation
        weights = [f"{t}.weight" for t in targets]
        biases = [f"{t}.bias" for t in targets]
        if n is self.agg.outputs[0] and self.agg.kind == "add":
            # The block's result is the sum of the b linears: one linear. With a shared input x,
            # sum_i (x W_i^T + c_i) = x (sum_i W_i)^T + sum_i c_i; with stacked inputs h_i, it is
            # [h_0 ... h_b-1] [W_0 ... W_b-1]^T + sum_i c_i ("row-parallel").
            if x.kind == "shared":
                w = self.new_param(n.target + "_weight", [k.weight for k in ms],
                                   (1, m.out_features, m.in_features), uniform, weights, like=n)
                w = self.method("sum", w, 0, like=n)
                h = x.node
            else:
                w = self.new_param(n.target + "_weight", [k.weight for k in ms],
                                   (m.out_features, m.in_features), uniform, weights, like=n, dim=1)
                h = self.method("flatten", self.method("movedim", x.node, 1, -2, like=n), -2, -1, like=n)
            c = None
            if m.bias is not None:
                c = self.new_param(n.target + "_bias", [k.bias for k in ms], (1, m.out_features), uniform,
                                   biases, like=n)
                c = self.method("sum", c, 0, like=n)
            self.todo.old_modules += targets
            return _Val("done", self.function(F.linear, h, w, c, like=n), shape)
        if x.kind == "shared":  # one linear with the weights of all b concatenated
            if not _wide_ok(m.in_features, b * m.out_features):
                raise _Refuse
            self.replace_modules(targets, _like_linear(ms), ("weight", "bias"))
            y = self.node("call_module", n.target, (x.node,), like=n)
            y = self.method("unflatten", y, -1, (b, m.out_features), like=n)
            return self.stacked(self.method("movedim", y, -2, 1, like=n), shape)
        if not small:
            raise _Refuse  # a large batched matmul (bmm) runs slower than b matmuls on CPU
        r = len(shape)
        mid = string.ascii_lowercase[2:2 + r - 1]  # c, d, ...: the per-sample dims before the last
        w = self.new_param(n.target + "_weight", [k.weight for k in ms], (1, m.out_features, m.in_features),
                           uniform, weights, like=n)
        y = self.function(torch.einsum, f"zb{mid}i,boi->zb{mid}o", x.node, w, like=n)
        if m.bias is not None:
            c = self.new_param(n.target + "_bias", [k.bias for k in ms], (1,) * r + (m.out_features,),
                               uniform, biases, like=n)
            y = self.function(operator.add, y, c, like=n)
        self.todo.old_modules += targets
        return self.stacked(y, shape)

    def replace_modules(self, targets: list[str], new: nn.Module, stacked: tuple[str, ...],
                        same: tuple[str, ...] = ()) -> None:
        """``new`` takes the first target's name; its entries concatenate the b modules' ones."""
        name = targets[0]
        self.todo.modules.append((name, new))
        self.todo.old_modules += targets
        def parts(attr: str) -> tuple[Recipe, ...]:
            return tuple(take(self.gm, f"{t}.{attr}") for t in targets)

        for attr in stacked + same:
            if getattr(new, attr, None) is not None:
                kind = Same if attr in same else (lambda ps: Cat(ps, 0))
                self.todo.recipes.append((f"{name}.{attr}", lambda a=attr, k=kind: k(parts(a))))

    def new_param(self, name: str, parts: list[torch.Tensor], unit: tuple[int, ...], init: str,
                  keys: list[str], like: fx.Node, raw: bool = False, dim: int = 0) -> fx.Node:
        """A parameter concatenating ``parts``, each reshaped to ``unit``, along ``dim``."""
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

    # -- the aggregation and the commit

    def aggregate(self, out: _Val) -> fx.Node:
        top = self.agg.top
        if out.kind == "done":  # the block's last op aggregated already
            return out.node
        rank = len(out.shape) + 1 if out.shape is not None else None
        if self.agg.kind == "add":
            if out.kind == "shared":
                return self.function(operator.mul, out.node, self.b, like=top)
            return self.method("sum", out.node, 1, like=top)
        d = _shift(self.agg.dim, rank, negative=False) - 1  # dim of a branch's tensor, batch included
        if out.kind == "shared":
            return self.function(torch.cat, [out.node] * self.b, like=top, dim=d)
        moved = self.method("movedim", out.node, 1, d, like=top)
        return self.method("flatten", moved, d, d + 1, like=top)

    def commit(self, out: fx.Node) -> None:
        gm, todo = self.gm, self.todo
        top = self.agg.top
        out.meta.pop("einc_batched", None)
        out.meta.pop("einc_stacked", None)
        if "einc_feature" in top.meta:
            out.meta["einc_feature"] = top.meta["einc_feature"]
        recipes = [(key, make()) for key, make in todo.recipes]  # take() reads the old entries
        top.replace_all_uses_with(out)
        old = sorted({n for r in self.regions for n in r} | set(self.agg.nodes), key=self.index.__getitem__)
        for n in reversed(old):
            self.graph.erase_node(n)
        inits = gm.meta.setdefault("einc", {}).setdefault("init", {})
        for name in todo.old_modules:
            if hasattr(gm, name):
                gm.delete_submodule(name)
        for name in todo.old_params:
            delattr(gm, name)
            inits.pop(name, None)
        for name, m in todo.modules:
            gm.add_submodule(name, m)
        for name, p, source in todo.params:
            gm.register_parameter(name, p)
            inits[name] = source
        for key, r in recipes:
            record(gm, key, r)


def _shape(n: Any) -> tuple[int, ...] | None:
    """Per-sample shape of the tensor ``n`` holds (a stacked one's branch axis included), if known."""
    if not isinstance(n, fx.Node):
        return None
    f = n.meta.get("einc_feature")
    if f is not None:
        return tuple(f.shape)
    s = n.meta.get("einc_stacked")
    return (s[0], *s[1]) if s is not None else None


def _shift(d: Any, rank: int | None, negative: bool = True) -> int:
    """A dim of a per-branch tensor (batch first, ``rank`` dims) as a dim of the stacked one.

    A negative dim counts from the end, which the branch axis does not change: it is kept
    (``softmax(dim=-1)`` stays readable) unless ``negative`` is false.
    """
    if type(d) is not int:
        raise _Refuse
    if d < 0:
        if rank is None or d < 1 - rank:
            raise _Refuse  # the batch dimension, or unknown
        if negative:
            return d
        d += rank
    if d == 0 or (rank is not None and d >= rank):
        raise _Refuse  # the batch dimension, or out of range
    return d + 1


def _nodes(v: Any) -> Any:
    if isinstance(v, _Val):
        return v.node
    if isinstance(v, (list, tuple)):
        return type(v)(_nodes(e) for e in v)
    if isinstance(v, dict):
        return {k: _nodes(e) for k, e in v.items()}
    return v


def _init_like(source: str | None, shape: tuple[int, ...]) -> str:
    """einc.lower's init source for a table (``torch.randn(1, 256, 512) * 0.02``), at ``shape``."""
    sizes = ", ".join(map(str, shape))
    if source:
        m = re.fullmatch(r"torch\.(randn|zeros|ones|rand)\([\d, ]*\)(.*)", source)
        if m:
            return f"torch.{m.group(1)}({sizes}){m.group(2)}"
    return f"torch.zeros({sizes})"


def _meta_param(parts: list[torch.Tensor | None], dim: int = 0) -> nn.Parameter | None:
    if parts[0] is None:
        return None
    return nn.Parameter(torch.cat([p.detach() for p in parts], dim=dim), requires_grad=parts[0].requires_grad)


def _like_linear(ms: list[nn.Linear]) -> nn.Linear:
    m = ms[0]
    out = sum(k.out_features for k in ms)
    new = nn.Linear(m.in_features, out, bias=m.bias is not None, device="meta", dtype=m.weight.dtype)
    new.weight = _meta_param([k.weight for k in ms])
    new.bias = _meta_param([k.bias for k in ms])
    return new.train(m.training)


def _like_conv(ms: list[nn.Conv2d]) -> nn.Conv2d:
    m = ms[0]
    new = nn.Conv2d(m.in_channels, m.out_channels * len(ms), m.kernel_size, stride=m.stride,
                    padding=m.padding, dilation=m.dilation, bias=m.bias is not None,
                    padding_mode=m.padding_mode, device="meta", dtype=m.weight.dtype)
    new.weight = _meta_param([k.weight for k in ms])
    new.bias = _meta_param([k.bias for k in ms])
    return new.train(m.training)


def _like_batchnorm(ms: list[nn.BatchNorm2d]) -> nn.BatchNorm2d:
    m = ms[0]
    new = nn.BatchNorm2d(m.num_features * len(ms), eps=m.eps, momentum=m.momentum, affine=m.affine,
                         track_running_stats=m.track_running_stats, device="meta",
                         dtype=(m.weight if m.affine else m.running_mean).dtype)
    if m.affine:
        new.weight = _meta_param([k.weight for k in ms])
        new.bias = _meta_param([k.bias for k in ms])
    if m.track_running_stats:
        new.running_mean = torch.cat([k.running_mean for k in ms])
        new.running_var = torch.cat([k.running_var for k in ms])
        new.num_batches_tracked = m.num_batches_tracked.clone()
    return new.train(m.training)
