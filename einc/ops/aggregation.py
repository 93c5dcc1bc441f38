"""Aggregation: b features in, one out (paper 3.1, A.2 eq. 14-17)."""

from __future__ import annotations

from math import prod

from .base import Cost, NotApplicable, Op, Param, one_of
from .state import COL, Feature, Features, mode_of

_SCALED = Param("scaled", "true or false", one_of(True, False))
_DIM = Param("dim", "1, 2 or 3", one_of(1, 2, 3))
_FACTOR = Param("b", "an integer >= 2", lambda v: type(v) is int and v >= 2)


def _same_mode(features: Features, name: str) -> str:
    mode = mode_of(features)
    if mode is None:
        raise NotApplicable(f"{name} of branches in different modes")
    return mode


def _matmul(features: Features, scaled: bool) -> Features:
    if len(features) != 2:
        raise NotApplicable(f"matmul takes 2 branches, not {len(features)}")
    a, b = features
    mode = _same_mode(features, "matmul")
    if a.shape[:-2] != b.shape[:-2]:
        raise NotApplicable(f"matmul of {a} and {b}: leading dims differ")
    if a.shape[-1] != b.shape[-2]:
        raise NotApplicable(f"matmul inner dimensions differ: {a.shape[-1]} and {b.shape[-2]}")
    return (Feature(a.shape[:-1] + b.shape[-1:], mode, a.grid if mode == COL else None),)


def _matmul_cost(features: Features, scaled: bool) -> Cost:
    a, b = features
    return Cost(flops=2 * prod(a.shape) * b.shape[-1])


def _add(features: Features) -> Features:
    _same_mode(features, "add")
    if len({f.shape for f in features}) != 1:
        raise NotApplicable("add of unequal shapes " + ", ".join(str(f) for f in features))
    grids = {f.grid for f in features}
    return (Feature(features[0].shape, features[0].mode, grids.pop() if len(grids) == 1 else None),)


def _concat(features: Features, dim: int, b: int) -> Features:
    if len(features) != b:
        raise NotApplicable(f"concat for {b} branches given {len(features)}")
    mode = _same_mode(features, "concat")
    rank = len(features[0].shape)
    if dim > rank:
        raise NotApplicable(f"concat over dim {dim} of {rank}-d {mode} features")
    rest = {f.shape[: dim - 1] + f.shape[dim:] for f in features}
    if len(rest) != 1:
        raise NotApplicable(f"concat over dim {dim} of mismatched " + ", ".join(str(f) for f in features))
    size = sum(f.shape[dim - 1] for f in features)
    shape = features[0].shape[: dim - 1] + (size,) + features[0].shape[dim:]
    grids = {f.grid for f in features}
    keep = len(grids) == 1 and not (mode == COL and dim == 1)
    return (Feature(shape, mode, grids.pop() if keep else None),)


def _elementwise(features: Features, **_: object) -> Cost:
    return Cost(flops=sum(f.numel for f in features[1:]))


def _lower_matmul(ctx, nodes, features, scaled):
    out = ctx.call("torch.matmul", nodes[0], nodes[1])
    if scaled:  # scaled by 1/sqrt(d) with d the last dim of the left operand (attention's d_k)
        out = ctx.call("mul", out, features[0].shape[-1] ** -0.5)
    return [out]


def _lower_add(ctx, nodes, features):
    out = nodes[0]
    for n in nodes[1:]:
        out = ctx.call("add", out, n)
    return [out]


def _lower_concat(ctx, nodes, features, dim, b):
    return [ctx.call("torch.cat", list(nodes), dim=dim)]


MATMUL = Op("matmul", "aggregation", (_SCALED,), _matmul, _matmul_cost, _lower_matmul,
            doc="a @ b over the last two dims; scaled: times 1/sqrt(a.size(-1))")
ADD = Op("add", "aggregation", (), _add, _elementwise, _lower_add, doc="sum of all branches")
CONCAT = Op("concat", "aggregation", (_DIM, _FACTOR), _concat, lower=_lower_concat,
            doc="concatenate b branches along dim (1-based, batch excluded)")
OPS = (MATMUL, ADD, CONCAT)
