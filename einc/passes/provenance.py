"""Weight provenance: how every state-dict entry of an optimised network is made of the lowered one's.

A pass that replaces weights (conv_fusion: a linear's weight becomes a convolution's;
horizontal: b branches' weights become one stacked weight) records, for each new tensor,
a ``Recipe`` over the tensors it replaced. Recipes compose, so after any sequence of passes
each state-dict entry of the optimised module is a recipe over the entries of the module
einc.lower built (``optimize=False``). The recipes only move values (reshape, concatenate,
copy), so both directions are exact:

    >>> raw = einc.build(arch, shape, optimize=False)
    >>> fast = einc.build(arch, shape)                       # fused, different state-dict keys
    >>> fast.load_state_dict(pack_state_dict(raw.state_dict(), fast))
    >>> raw.load_state_dict(unpack_state_dict(fast.state_dict(), fast))

The table lives in ``gm.meta[einc.meta.PROVENANCE]`` (``{"keys": [...], "recipes": {...}}``), so it
follows the module through ``copy.deepcopy``; a module no pass has touched has none and packs
to itself.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx

from ..errors import LoweringError
from ..meta import PROVENANCE

__all__ = ["Cat", "Recipe", "Reshape", "Same", "Src", "forget_missing", "pack_state_dict", "record", "take",
           "unpack_state_dict"]


@dataclass(frozen=True)
class Src:
    """The lowered module's entry ``key``, of shape ``shape``."""

    key: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Reshape:
    part: Recipe
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Cat:
    parts: tuple[Recipe, ...]
    dim: int


@dataclass(frozen=True)
class Same:
    """Copies that stay equal (BatchNorm's ``num_batches_tracked`` of b batched branches):
    packing keeps the first, unpacking gives every part the value."""

    parts: tuple[Recipe, ...]


Recipe = Src | Reshape | Cat | Same


def shape_of(r: Recipe) -> tuple[int, ...]:
    if isinstance(r, (Src, Reshape)):
        return r.shape
    if isinstance(r, Same):
        return shape_of(r.parts[0])
    first = shape_of(r.parts[0])
    d = r.dim % len(first)
    return first[:d] + (sum(shape_of(p)[d] for p in r.parts),) + first[d + 1:]


# ---------------------------------------------------------------- recording (for passes)


def _table(gm: fx.GraphModule) -> dict[str, Any]:
    table: dict[str, Any] | None = gm.meta.get(PROVENANCE)
    if table is None:  # the first rewrite: what is there now is what einc.lower made
        table = gm.meta[PROVENANCE] = {"keys": list(gm.state_dict(keep_vars=True)), "recipes": {}}
    return table


def take(gm: fx.GraphModule, key: str) -> Recipe:
    """The recipe of ``gm``'s current entry ``key``, which a pass is about to replace."""
    recipes = _table(gm)["recipes"]
    r = recipes.pop(key, None)
    if r is None:
        r = Src(key, tuple(_entry(gm, key).shape))
    return r


def record(gm: fx.GraphModule, key: str, recipe: Recipe) -> None:
    """``gm``'s new entry ``key`` is ``recipe`` (built from ``take``n recipes)."""
    _table(gm)["recipes"][key] = recipe


def forget_missing(gm: fx.GraphModule) -> None:
    """Drop the recipes of entries ``gm`` no longer has (dead code removed them)."""
    table = gm.meta.get(PROVENANCE)
    if table is not None:
        keys = set(gm.state_dict())
        table["recipes"] = {k: r for k, r in table["recipes"].items() if k in keys}


def _entry(gm: fx.GraphModule, key: str) -> torch.Tensor:
    owner, _, name = key.rpartition(".")
    mod = gm.get_submodule(owner) if owner else gm
    t = getattr(mod, name, None)
    if not isinstance(t, torch.Tensor):
        raise LoweringError(f'the module has no state entry "{key}"')
    return t


# ---------------------------------------------------------------- packing


def pack_state_dict(unfused: Mapping[str, torch.Tensor],
                    gm: fx.GraphModule) -> OrderedDict[str, torch.Tensor]:
    """The state dict of the optimised ``gm`` holding the weights of ``unfused``.

    ``unfused`` is a state dict of the same architecture built with ``optimize=False``
    (or an earlier state of ``gm`` itself); the result loads strictly into ``gm``.
    """
    recipes = gm.meta.get(PROVENANCE, {}).get("recipes", {})
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key, current in gm.state_dict().items():
        r = recipes.get(key) or Src(key, tuple(current.shape))
        out[key] = _pack(r, unfused)
    return out


def _pack(r: Recipe, sd: Mapping[str, torch.Tensor]) -> torch.Tensor:
    if isinstance(r, Src):
        if r.key not in sd:
            raise LoweringError(f'the state dict has no entry "{r.key}"; '
                                "is it the same architecture, unoptimised?")
        t = sd[r.key]
        if tuple(t.shape) != r.shape:
            raise LoweringError(f'state dict entry "{r.key}" has shape {tuple(t.shape)}, not {r.shape}')
        return t
    if isinstance(r, Reshape):
        return _pack(r.part, sd).reshape(r.shape)
    if isinstance(r, Same):
        return _pack(r.parts[0], sd)
    return torch.cat([_pack(p, sd) for p in r.parts], dim=r.dim)


def unpack_state_dict(fused: Mapping[str, torch.Tensor],
                      gm: fx.GraphModule) -> OrderedDict[str, torch.Tensor]:
    """The inverse of ``pack_state_dict``: a state dict for the unoptimised network.

    ``fused`` is a state dict of ``gm`` (e.g. after training it); the result holds new
    tensors (no storage shared with ``fused``) under the keys einc.lower gives, in its order.
    """
    table = gm.meta.get(PROVENANCE, {})
    recipes = table.get("recipes", {})
    got: dict[str, torch.Tensor] = {}
    for key, value in fused.items():
        _unpack(recipes.get(key) or Src(key, tuple(value.shape)), value, got)
    order = table.get("keys") or list(got)
    return OrderedDict((k, got[k]) for k in order if k in got)


def _unpack(r: Recipe, value: torch.Tensor, out: dict[str, torch.Tensor]) -> None:
    if isinstance(r, Src):
        out[r.key] = value.detach().clone().reshape(r.shape)
    elif isinstance(r, Reshape):
        _unpack(r.part, value.reshape(shape_of(r.part)), out)
    elif isinstance(r, Same):
        for p in r.parts:
            _unpack(p, value, out)
    else:
        sizes = [shape_of(p)[r.dim % value.dim()] for p in r.parts]
        for p, piece in zip(r.parts, torch.split(value, sizes, dim=r.dim), strict=True):
            _unpack(p, piece, out)
