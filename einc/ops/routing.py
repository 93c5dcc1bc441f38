"""Routing: one feature in, one out, content moved but not changed (paper 3.1, A.2 eq. 18-23, A.3)."""

from __future__ import annotations

from itertools import permutations

from .base import NotApplicable, Op, Param, natural, positive, single
from .state import COL, IM, Feature, Features

_ORDERS = {tuple(p) for n in (2, 3) for p in permutations(range(1, n + 1))}


def _identity(features: Features) -> Features:
    single(features)
    return features


def _permute(features: Features, o: tuple[int, ...]) -> Features:
    f = single(features)
    if len(o) != len(f.shape):
        raise NotApplicable(f"permute order {o} is for {len(o)}-d features, not {f}")
    shape = tuple(f.shape[i - 1] for i in o)
    return (Feature(shape, f.mode, f.grid if o == tuple(sorted(o)) else None),)


def _out_size(size: int, k: int, s: int, p: int) -> int:
    return (size + 2 * p - (k - 1) - 1) // s + 1  # paper eq. 31-32, dilation 1


def _im2col(features: Features, k: int, s: int, p: int) -> Features:
    f = single(features)
    if f.mode != IM:
        raise NotApplicable(f"im2col needs an Im feature, not {f}")
    c, h, w = f.shape
    if h + 2 * p < k or w + 2 * p < k:
        raise NotApplicable(f"im2col kernel {k} is larger than the padded input {h + 2 * p}x{w + 2 * p}")
    grid = (_out_size(h, k, s, p), _out_size(w, k, s, p))
    return (Feature((grid[0] * grid[1], c * k * k), COL, grid),)


def _col2im(features: Features) -> Features:
    f = single(features)
    if f.mode != COL:
        raise NotApplicable(f"col2im needs a Col feature, not {f}")
    if f.grid is None or f.grid[0] * f.grid[1] != f.shape[0]:
        raise NotApplicable(f"col2im without matching im2col geometry for {f}")
    return (Feature((f.shape[1],) + f.grid, IM),)


def _lower_identity(ctx, nodes, features):
    return list(nodes)


def _lower_permute(ctx, nodes, features, o):
    return [ctx.call(".permute", nodes[0], 0, *o)]


def _lower_im2col(ctx, nodes, features, k, s, p):
    # unfold gives (B, C*k*k, L) with C slowest: the layout of a Conv2d weight's input axes.
    cols = ctx.call("torch.nn.functional.unfold", nodes[0], kernel_size=k, padding=p, stride=s)
    return [ctx.call(".transpose", cols, 1, 2)]


def _lower_col2im(ctx, nodes, features):
    (f,) = features
    x = ctx.call(".transpose", nodes[0], 1, 2)
    return [ctx.call(".reshape", x, -1, f.shape[1], *f.grid)]


IDENTITY = Op("identity", "routing", (), _identity, lower=_lower_identity, doc="no change")
PERMUTE = Op("permute", "routing",
             (Param("o", "a permutation of (1, 2) or (1, 2, 3)", lambda v: v in _ORDERS),),
             _permute, lower=_lower_permute, doc="reorder the dims (1-based, batch excluded)")
IM2COL = Op("im2col", "routing",
            (Param("k", "a positive integer", positive), Param("s", "a positive integer", positive),
             Param("p", "a non-negative integer", natural)),
            _im2col, lower=_lower_im2col,
            doc="(C,H,W) -> (H'W', C*k*k) sliding windows; remembers the grid (H', W')")
COL2IM = Op("col2im", "routing", (), _col2im, lower=_lower_col2im,
            doc="(H'W', D) -> (D, H', W') using the grid its im2col left")
OPS = (IDENTITY, PERMUTE, IM2COL, COL2IM)
