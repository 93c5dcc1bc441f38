"""Horizontal fusion: a branching module with b equal branches, computed once on stacked values.

A block is found from its aggregation (``torch.cat`` of b values, or einc's chain of additions
from one ``add``); its branches are the nodes einc.lower tagged with the block's fork and copy
(``meta[BRANCH]``), so no search over the graph is needed. The branches are matched node for
node and rewritten in the stacked form of NOTE: [Stacked values] (einc.passes.stacking), op
by op through the rules of einc.passes.batching_rules; the weights it moves are recorded in
einc.passes.provenance, so state dicts still convert.
"""

from __future__ import annotations

import operator
from collections.abc import Hashable
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from ..meta import BATCHED, BRANCH, FEATURE, INFO, PATH, STACKED
from .batching_rules import MODULE_RULES, RULES, stack_parameter, stack_split
from .cost import CPU, CostModel
from .graph import arg_key, call_counts, finish, shape_of
from .provenance import record
from .stacking import Block, Builder, Refuse, Value, shared, shift

__all__ = ["batch_branches"]

Branch = tuple[Any, ...]  # meta[BRANCH]: ((fork path, copy), ...), outermost first


def batch_branches(gm: fx.GraphModule, cost: CostModel = CPU) -> int:
    """Compute each branching module with b equal branches as one stacked computation.

    A candidate is an aggregation (``torch.cat`` of b values, or einc's chain of b - 1
    additions from one ``add`` leaf) whose inputs come from the b copies of one fork. The
    copies are batched when each is used only by the aggregation and they match node for node
    (same ops, same module configurations, same constants, shared inputs in the same places);
    the block's input is shared (a clone) or split by ``torch.chunk`` (a group-dim). Outer
    blocks go first (inner ones are batched with them). A block holding an op without a batched
    form is left alone, as is one whose batched form ``cost`` says is slower.
    """
    count = 0
    index = {n: i for i, n in enumerate(gm.graph.nodes)}
    calls = call_counts(gm)
    copies = _copies(gm)
    for block in _aggregations(gm):
        if block.top not in index:  # inside a block batched already
            continue
        regions = _match(gm, block, copies, calls)
        if regions is None:
            continue
        block.regions = regions
        if _run(Builder(gm, block, cost), index):
            count += 1
            # blocks still to try lie outside this one (earlier in the graph): their nodes stay
            index = {n: i for i, n in enumerate(gm.graph.nodes)}
            calls = call_counts(gm)
            copies = _copies(gm)
    finish(gm)
    return count


# ---------------------------------------------------------------- finding blocks


def _copies(gm: fx.GraphModule) -> dict[Branch, list[fx.Node]]:
    """Every copy of every fork (a prefix of some node's ``meta[BRANCH]``) -> its nodes, in graph order."""
    out: dict[Branch, list[fx.Node]] = {}
    for n in gm.graph.nodes:
        tag = n.meta.get(BRANCH, ())
        for k in range(1, len(tag) + 1):
            out.setdefault(tag[:k], []).append(n)
    return out


def _aggregations(gm: fx.GraphModule) -> list[Block]:
    """Candidate aggregations, last first (an outer block before the blocks inside it)."""
    out = []
    for n in reversed(gm.graph.nodes):
        if n.meta.get(BATCHED):
            continue
        if n.op == "call_function" and n.target is torch.cat:
            items = n.args[0] if n.args else None
            dim = n.kwargs.get("dim", n.args[1] if len(n.args) > 1 else 0)
            if (isinstance(items, (list, tuple)) and len(items) >= 2 and type(dim) is int
                    and all(isinstance(a, fx.Node) for a in items) and len(n.args) + len(n.kwargs) <= 2):
                out.append(Block("cat", n, [n], list(items), [n] * len(items), dim))
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
            out.append(Block("add", n, chain, outputs[::-1], consumers[::-1]))
    return out


def _is_add(n: Any) -> bool:
    return (isinstance(n, fx.Node) and n.op == "call_function" and n.target is operator.add and not n.kwargs
            and len(n.args) == 2 and all(isinstance(a, fx.Node) for a in n.args))


def _continues(inner: fx.Node, outer: fx.Node) -> bool:
    """``outer = inner + x`` adds the next branch of the same ``add`` leaf (einc.lower's chain)."""
    path = inner.meta.get(PATH)
    return (_is_add(outer) and outer.args[0] is inner and len(inner.users) == 1 and path is not None
            and outer.meta.get(PATH) == path and outer.meta.get(BRANCH) == inner.meta.get(BRANCH))


def _fork_copies(block: Block) -> list[Branch] | None:
    """The tags of the b copies of one fork whose results the aggregation joins, in order."""
    outer = block.top.meta.get(BRANCH, ())
    depth = len(outer)
    tags = []
    for o in block.outputs:
        tag = o.meta.get(BRANCH, ())
        if len(tag) <= depth or tag[:depth] != outer:
            return None
        tags.append(tag[:depth + 1])
    forks = {t[-1][0] for t in tags}
    if len(forks) != 1 or [t[-1][1] for t in tags] != list(range(len(tags))):
        return None
    return tags


# ---------------------------------------------------------------- matching


def _match(gm: fx.GraphModule, block: Block, copies: dict[Branch, list[fx.Node]],
           calls: dict[str, int]) -> list[list[fx.Node]] | None:
    """The branches' nodes, aligned (graph order within each), or None if not batchable."""
    outs = block.outputs
    b = len(outs)
    if len(set(outs)) != b:
        return None
    tags = _fork_copies(block)
    if tags is None:
        return None
    regions = [copies.get(t, []) for t in tags]
    size = len(regions[0])
    if size == 0 or any(len(r) != size for r in regions):
        return None
    modules = dict(gm.named_modules())
    sigs = []
    for region, out, consumer in zip(regions, outs, block.consumers, strict=True):
        pos = {n: k for k, n in enumerate(region)}
        if not _self_contained(region, pos, out, consumer, calls):
            return None
        try:
            sigs.append([_signature(n, pos, modules, gm) for n in region])
        except Refuse:
            return None
    if any(s != sigs[0] for s in sigs[1:]):
        return None
    if len({r.index(o) for r, o in zip(regions, outs, strict=True)}) != 1:
        return None
    return regions


def _self_contained(region: list[fx.Node], pos: dict[fx.Node, int], out: fx.Node, consumer: fx.Node,
                    calls: dict[str, int]) -> bool:
    """Only the aggregation (``consumer``, once) reads the branch, and only from ``out``; the
    branch's weights are its own."""
    for n in region:
        if n.op in ("placeholder", "output") or n.meta.get(BATCHED):
            return False
        if n is out:
            if list(n.users) != [consumer] or _uses(consumer, n) != 1:
                return False
        elif any(u not in pos for u in n.users):
            return False
        if n.op in ("call_module", "get_attr") and calls.get(str(n.target)) != 1:
            return False  # a weight used twice cannot be stacked once
    return True


def _uses(user: fx.Node, n: fx.Node) -> int:
    return sum(a is n for a in _flat(user.args) + _flat(tuple(user.kwargs.values())))


def _flat(v: Any) -> list[Any]:
    if isinstance(v, (list, tuple)):
        return [x for e in v for x in _flat(e)]
    return [v]


def _is_split(n: fx.Node, inside: dict[fx.Node, Any]) -> bool:
    """``n`` takes one piece of a ``torch.chunk`` made outside the branches (a group-dim)."""
    src = n.args[0] if n.args else None
    return (n.op == "call_function" and n.target is operator.getitem and isinstance(src, fx.Node)
            and src not in inside and src.op == "call_function" and src.target is torch.chunk)


def _signature(n: fx.Node, pos: dict[fx.Node, int], modules: dict[str, nn.Module],
               gm: fx.GraphModule) -> Hashable:
    def arg(a: Any) -> Any:  # a node in the branch by its position there: equal across branches
        return arg_key(a, lambda v: ("branch", pos[v]) if v in pos else ("outside", v))

    target: Any
    if n.op == "call_module":
        target = _module_key(modules[str(n.target)])
    elif n.op == "get_attr":
        p = getattr(gm, str(n.target))
        if not isinstance(p, nn.Parameter):
            raise Refuse
        target = ("parameter", tuple(p.shape), p.dtype, p.requires_grad)
    else:
        target = n.target
    if _is_split(n, pos):
        return (n.op, target, arg(n.args[0]), "split")
    return (n.op, target, arg(n.args), arg(n.kwargs))


def _module_key(m: nn.Module) -> Hashable:
    config: tuple[Any, ...]
    if isinstance(m, nn.Identity):
        config = ()
    elif type(m) not in MODULE_RULES:
        raise Refuse
    elif isinstance(m, nn.Linear):
        config = (m.in_features, m.out_features, m.bias is not None)
    elif isinstance(m, nn.Conv2d):
        config = (m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation, m.groups,
                  m.bias is not None, m.padding_mode)
    elif isinstance(m, nn.BatchNorm2d):
        config = (m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats)
    elif isinstance(m, nn.LayerNorm):
        config = (tuple(m.normalized_shape), m.eps, m.elementwise_affine,
                  getattr(m, "bias", None) is not None)
    else:  # a rule without a key here: refuse rather than match modules by type alone
        raise Refuse
    grads = tuple(p.requires_grad for p in m.parameters())
    dtypes = tuple(p.dtype for p in m.parameters())
    return (type(m), config, grads, dtypes, m.training)


# ---------------------------------------------------------------- rewriting


def _run(bt: Builder, index: dict[fx.Node, int]) -> bool:
    """Build the block's stacked form before its aggregation and commit it; False if refused."""
    block = bt.block
    rep: dict[fx.Node, Value] = {}
    try:
        with bt.graph.inserting_before(block.top):
            for nodes in zip(*block.regions, strict=True):
                rep[nodes[0]] = _value(bt, nodes, rep)
            out = _aggregate(bt, rep[block.outputs[0]])
    except Refuse:
        for n in reversed(bt.created):
            bt.graph.erase_node(n)
        return False
    _commit(bt, out, index)
    return True


def _arg(a: Any, rep: dict[fx.Node, Value]) -> Any:
    if isinstance(a, fx.Node):
        return rep.get(a) or shared(a)
    if isinstance(a, (list, tuple)):
        return type(a)(_arg(e, rep) for e in a)
    if isinstance(a, dict):
        return {k: _arg(v, rep) for k, v in a.items()}
    return a


def _nodes(v: Any) -> Any:
    if isinstance(v, Value):
        return v.node
    if isinstance(v, (list, tuple)):
        return type(v)(_nodes(e) for e in v)
    if isinstance(v, dict):
        return {k: _nodes(e) for k, e in v.items()}
    return v


def _value(bt: Builder, nodes: tuple[fx.Node, ...], rep: dict[fx.Node, Value]) -> Value:
    """One aligned tuple of nodes (one per branch) -> its batched value."""
    n = nodes[0]
    shape = shape_of(n)
    if n.op == "get_attr":
        return stack_parameter(bt, nodes, shape)
    if _is_split(n, rep):
        return stack_split(bt, nodes, shape)
    args, kwargs = _arg(n.args, rep), _arg(n.kwargs, rep)
    if n.op == "call_module":
        m = bt.module_of(n)
        x = args[0] if args else None
        if len(args) != 1 or kwargs or not isinstance(x, Value):
            raise Refuse
        if isinstance(m, nn.Identity):
            return x
        rule = MODULE_RULES.get(type(m))
        if rule is None:
            raise Refuse
        return rule(bt, nodes, x, shape)
    fn = RULES.get(n.target) if n.op in ("call_function", "call_method") else None  # type: ignore[arg-type]
    if fn is None:
        raise Refuse
    if all(v.kind == "shared" for v in _flat([*args, *kwargs.values()]) if isinstance(v, Value)):
        # the same weight-free op of the same input on every branch: compute it once
        new = bt.node(n.op, n.target, _nodes(args), _nodes(kwargs), like=n)
        if FEATURE in n.meta:
            new.meta[FEATURE] = n.meta[FEATURE]
        return Value("shared", new, shape, n.target is torch.chunk)
    return fn(bt, n, args, kwargs, shape)


def _aggregate(bt: Builder, out: Value) -> fx.Node:
    block = bt.block
    top = block.top
    if out.kind == "done":  # the block's last op aggregated already
        return out.node
    rank = len(out.shape) + 1 if out.shape is not None else None
    if block.kind == "add":
        if out.kind == "shared":
            return bt.function(operator.mul, out.node, bt.b, like=top)
        return bt.method("sum", out.node, 1, like=top)
    d = _concat_dim(block.dim, rank)
    if out.kind == "shared":
        return bt.function(torch.cat, [out.node] * bt.b, like=top, dim=d)
    moved = bt.method("movedim", out.node, 1, d, like=top)
    return bt.method("flatten", moved, d, d + 1, like=top)


def _concat_dim(dim: int | None, rank: int | None) -> int:
    """The concatenation's dim of a branch's tensor, batch included and non-negative."""
    return shift(dim, rank, negative=False) - 1


def _commit(bt: Builder, out: fx.Node, index: dict[fx.Node, int]) -> None:
    gm, todo, block = bt.gm, bt.todo, bt.block
    top = block.top
    out.meta.pop(BATCHED, None)
    out.meta.pop(STACKED, None)
    if FEATURE in top.meta:
        out.meta[FEATURE] = top.meta[FEATURE]
    recipes = [(key, make()) for key, make in todo.recipes]  # take() reads the old entries
    top.replace_all_uses_with(out)
    old = sorted({n for r in block.regions for n in r} | set(block.nodes), key=index.__getitem__)
    for n in reversed(old):
        gm.graph.erase_node(n)
    bt.drop_unused()
    inits = gm.meta.setdefault(INFO, {}).setdefault("init", {})
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
