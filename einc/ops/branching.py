"""Branching: one feature in, b features out (paper 3.1, A.2 eq. 10-13)."""

from __future__ import annotations

from .base import NotApplicable, Op, Param, one_of, single
from .state import COL, Feature, Features

_FACTOR = Param("b", "an integer >= 2", lambda v: type(v) is int and v >= 2)
_DIM = Param("dim", "1, 2 or 3", one_of(1, 2, 3))


def _clone(features: Features, b: int) -> Features:
    return (single(features),) * b


def _group_dim(features: Features, dim: int, b: int) -> Features:
    f = single(features)
    if dim > len(f.shape):
        raise NotApplicable(f"group-dim over dim {dim} of a {len(f.shape)}-d {f.mode} feature")
    size = f.shape[dim - 1]
    if size % b:
        raise NotApplicable(f"group-dim: {b} does not divide dim {dim} of size {size}")
    shape = f.shape[: dim - 1] + (size // b,) + f.shape[dim:]
    grid = None if (f.mode == COL and dim == 1) else f.grid  # splitting the sequence breaks its grid
    return (Feature(shape, f.mode, grid),) * b


def _lower_clone(ctx, nodes, features, b):
    return [nodes[0]] * b  # branches read the same tensor; no copy is needed


def _lower_group_dim(ctx, nodes, features, dim, b):
    parts = ctx.call("torch.chunk", nodes[0], b, dim=dim)
    return [ctx.call("getitem", parts, i) for i in range(b)]


CLONE = Op("clone", "branching", (_FACTOR,), _clone, lower=_lower_clone,
           doc="b references to the same feature")
GROUP_DIM = Op("group-dim", "branching", (_DIM, _FACTOR), _group_dim, lower=_lower_group_dim,
               doc="split dim (1-based, batch excluded) into b equal chunks")
OPS = (CLONE, GROUP_DIM)
