"""Linears reading the same tensor become one wider linear whose output is split."""

from __future__ import annotations

import operator
from collections.abc import Hashable
from math import prod

import torch
import torch.fx as fx
import torch.nn as nn

from ..meta import PATH
from .cost import CPU, CostModel
from .graph import call_counts, concat_linears, finish, shape_of, submodule
from .provenance import Cat, record, take

__all__ = ["merge_linears"]


def merge_linears(gm: fx.GraphModule, cost: CostModel = CPU) -> int:
    """Linears reading the same tensor become one, its output split: ``torch.split(y, sizes, -1)``.

    Exact: each output column is the same dot product. Merged are linears called once, on one
    argument, with equal input width, bias presence, dtype, mode and trainability; the merged
    module takes the first one's name. ``cost`` says which runs of them are worth merging (the
    ViT's per-head Q, K and V become one ``Linear(512, 768)``).
    """
    calls = call_counts(gm)
    groups: dict[Hashable, list[fx.Node]] = {}
    for n in gm.graph.nodes:
        if n.op != "call_module" or n.kwargs or len(n.args) != 1 or not isinstance(n.args[0], fx.Node):
            continue
        m = submodule(gm, n)
        if type(m) is not nn.Linear or calls[n.target] != 1:
            continue
        key = (n.args[0], m.in_features, m.bias is not None, m.weight.dtype, m.weight.device, m.training,
               tuple(p.requires_grad for p in m.parameters()))
        groups.setdefault(key, []).append(n)
    count = 0
    for group in groups.values():
        for nodes in _wide_runs(gm, group, cost):
            _merge(gm, nodes)
            count += 1
    finish(gm)
    return count


def _linear(gm: fx.GraphModule, n: fx.Node) -> nn.Linear:
    m = submodule(gm, n)
    assert isinstance(m, nn.Linear)
    return m


def _wide_runs(gm: fx.GraphModule, nodes: list[fx.Node], cost: CostModel) -> list[list[fx.Node]]:
    """Runs of consecutive linears worth merging (NOTE: [GEMM shapes] in einc.passes.cost)."""
    ms = [_linear(gm, n) for n in nodes]
    k = ms[0].in_features
    shapes = [shape_of(n) for n in nodes]
    if all(s is not None and cost.small(2 * prod(s[:-1]) * k * m.out_features)
           for s, m in zip(shapes, ms, strict=True)):
        return [nodes] if len(nodes) > 1 else []
    runs: list[list[fx.Node]] = []
    run: list[fx.Node] = []
    width = 0
    for n, m in zip(nodes, ms, strict=True):
        if run and not cost.wide_ok(k, width + m.out_features):
            runs.append(run)
            run, width = [], 0
        if cost.wide_ok(k, m.out_features):
            run.append(n)
            width += m.out_features
    runs.append(run)
    return [r for r in runs if len(r) > 1]


def _merge(gm: fx.GraphModule, nodes: list[fx.Node]) -> None:
    """One linear for ``nodes`` (same input), its output split back into their outputs."""
    targets = [str(n.target) for n in nodes]
    ms = [_linear(gm, n) for n in nodes]
    wide = concat_linears(ms)
    name = targets[0]
    recipes = [(f"{name}.{a}", Cat(tuple(take(gm, f"{t}.{a}") for t in targets), 0))
               for a in ("weight", "bias") if getattr(wide, a) is not None]
    with gm.graph.inserting_before(nodes[0]):
        y = gm.graph.call_module(name, (nodes[0].args[0],))
        parts = gm.graph.call_function(torch.split, (y, [m.out_features for m in ms]), {"dim": -1})
    y.meta[PATH] = parts.meta[PATH] = nodes[0].meta.get(PATH, ())
    for j, n in enumerate(nodes):
        with gm.graph.inserting_before(n):
            piece = gm.graph.call_function(operator.getitem, (parts, j))
        piece.meta.update(n.meta)
        n.replace_all_uses_with(piece)
        gm.graph.erase_node(n)
    for t in targets:
        gm.delete_submodule(t)
    gm.add_submodule(name, wide)
    for key, r in recipes:
        record(gm, key, r)
