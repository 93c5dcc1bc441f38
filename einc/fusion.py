"""Fusion: exact rewrites that batch a lowered network's parallel work into fewer, larger ops.

Four passes, run by ``fuse`` after einc.passes when a network is built with ``optimize=True``:

* ``batch_branches`` (horizontal fusion): a branching module whose b branches are the same
  computation with their own weights (the grammar's repeated ``[M]*4``, or equal independent
  branches) runs once on a *stacked* value, per-branch weights stacked alongside. The b
  first linears of branches reading one tensor become one ``nn.Linear`` with the weights
  concatenated; later linears one batched product (``torch.einsum``); BatchNorms one over
  b * C channels; elementwise ops run once on the stack; the aggregation becomes a reshape
  (concat) or a sum over the stacked axis (add), and an add right after b linears is one
  linear (``x (W_0 + ... + W_b-1)^T``, or ``[h_0 ... h_b-1] [W_0 ... W_b-1]^T``);
* ``dedupe``: a weight-free op applied twice to the same input is computed once;
* ``merge_linears``: linears reading the same tensor become one wider ``nn.Linear`` whose
  output is split (the ViT's per-head Q, K and V become one ``Linear(512, 768)``);
* ``fuse_attention``: ``softmax(q @ k^T * c) @ v``, as the einspace grammar writes attention,
  becomes ``F.scaled_dot_product_attention(q, k, v, scale=c)``.

Where a batched form would be slower on CPU (NOTE: [GEMM shapes]) the work is left as it was.
The weights move (concatenated, reshaped) and the state dict's keys change; einc.packing
records how, so ``pack_state_dict`` / ``unpack_state_dict`` (re-exported here) convert a
state dict of the unfused network (``optimize=False``) to the fused one and back.

    >>> raw = einc.build(vit, (3, 64, 64), optimize=False)     # 4 heads: 12 Linear(512, 64)
    >>> gm = fuse(optimize(copy.deepcopy(raw)))                 # one Linear(512, 768), one SDPA
    >>> gm.load_state_dict(pack_state_dict(raw.state_dict(), gm))
    >>> assert_same_function(raw, gm, (3, 64, 64))

Like einc.passes, each pass rewrites in place, returns its count and leaves the graph linted
and recompiled; tests/test_fusion.py checks in float64 that fused and unfused modules agree,
in eval and train mode, gradients included.
"""

from __future__ import annotations

import operator
from math import prod
from typing import Any, Callable

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from .batching import (_BINARY, _GEMM_FLOPS, _METHODS, _SOFTMAX, _UNARY, _call_counts, _like_linear, _shape,
                       _wide_ok, batch_branches)
from .packing import Cat, pack_state_dict, record, take, unpack_state_dict
from .passes import _finish, _order_modules, _permutation, dead_code, remove_permutes

__all__ = ["FUSIONS", "batch_branches", "dedupe", "fuse", "fuse_attention", "merge_linears",
           "pack_state_dict", "unpack_state_dict"]


def fuse(gm: fx.GraphModule) -> fx.GraphModule:
    """Run every pass of ``FUSIONS`` in order, then fold permutes and drop dead code; returns ``gm``."""
    for p in FUSIONS:
        p(gm)
    remove_permutes(gm)
    dead_code(gm)
    _order_modules(gm)
    _finish(gm)
    return gm


# ---------------------------------------------------------------- dedupe


def dedupe(gm: fx.GraphModule) -> int:
    """Compute each weight-free op once per distinct input: later copies read the first.

    Branches cloned from one tensor often start with the same op (``clone(b=8)`` then
    ``softmax`` on every branch); once batched, those copies are the same node's work. Only
    the deterministic ops einc lowers to are merged (never one that draws random numbers).
    """
    seen: dict[tuple, fx.Node] = {}
    count = 0
    for n in list(gm.graph.nodes):
        if not (n.op == "call_method" and n.target in _METHODS | _VIEWS
                or n.op == "call_function" and _pure(n.target)):
            continue
        try:
            key = (n.op, n.target, _hashable(n.args), _hashable(n.kwargs))
            hash(key)
        except TypeError:
            continue
        first = seen.setdefault(key, n)
        if first is not n:
            n.replace_all_uses_with(first)
            gm.graph.erase_node(n)
            count += 1
    _finish(gm)
    return count


_VIEWS = {"unflatten", "flatten", "movedim", "unsqueeze", "expand", "repeat"}


def _pure(fn: Any) -> bool:
    return (fn in _BINARY or fn in _UNARY or fn in _SOFTMAX
            or fn in (torch.chunk, torch.split, operator.getitem, torch.cat, F.unfold, F.layer_norm))


def _hashable(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return (type(v).__name__, tuple(_hashable(e) for e in v))
    if isinstance(v, dict):
        return ("dict", tuple((k, _hashable(e)) for k, e in v.items()))
    if isinstance(v, slice):
        return ("slice", _hashable(v.start), _hashable(v.stop), _hashable(v.step))
    if isinstance(v, fx.Node):
        return v
    return (type(v).__name__, v)  # 1, 1.0 and True are different constants to torch


# ---------------------------------------------------------------- merge_linears


def merge_linears(gm: fx.GraphModule) -> int:
    """Linears reading the same tensor become one, its output split: ``torch.split(y, sizes, -1)``.

    Exact: each output column is the same dot product. Merged are linears called once, on one
    argument, with equal input width, bias presence, dtype, mode and trainability; the merged
    module takes the first one's name.
    """
    calls = _call_counts(gm)
    groups: dict[tuple, list[fx.Node]] = {}
    for n in gm.graph.nodes:
        if n.op != "call_module" or n.kwargs or len(n.args) != 1 or not isinstance(n.args[0], fx.Node):
            continue
        m = gm.get_submodule(n.target)
        if type(m) is not nn.Linear or calls[n.target] != 1:
            continue
        key = (n.args[0], m.in_features, m.bias is not None, m.weight.dtype, m.weight.device, m.training,
               tuple(p.requires_grad for p in m.parameters()))
        groups.setdefault(key, []).append(n)
    count = 0
    for group in groups.values():
        for nodes in _wide_runs(gm, group):
            _merge(gm, nodes)
            count += 1
    _finish(gm)
    return count


def _wide_runs(gm: fx.GraphModule, nodes: list[fx.Node]) -> list[list[fx.Node]]:
    """Runs of consecutive linears worth merging (NOTE: [GEMM shapes])."""
    ms = [gm.get_submodule(n.target) for n in nodes]
    k = ms[0].in_features
    shapes = [_shape(n) for n in nodes]
    if all(s is not None and 2 * prod(s[:-1]) * k * m.out_features <= _GEMM_FLOPS
           for s, m in zip(shapes, ms, strict=True)):
        return [nodes] if len(nodes) > 1 else []
    runs: list[list[fx.Node]] = []
    run: list[fx.Node] = []
    width = 0
    for n, m in zip(nodes, ms):
        if run and not _wide_ok(k, width + m.out_features):
            runs.append(run)
            run, width = [], 0
        if _wide_ok(k, m.out_features):
            run.append(n)
            width += m.out_features
    runs.append(run)
    return [r for r in runs if len(r) > 1]


def _merge(gm: fx.GraphModule, nodes: list[fx.Node]) -> None:
    """One linear for ``nodes`` (same input), its output split back into their outputs."""
    targets = [n.target for n in nodes]
    ms = [gm.get_submodule(t) for t in targets]
    wide = _like_linear(ms)
    name = targets[0]
    recipes = [(f"{name}.{a}", Cat(tuple(take(gm, f"{t}.{a}") for t in targets), 0))
               for a in ("weight", "bias") if getattr(wide, a) is not None]
    with gm.graph.inserting_before(nodes[0]):
        y = gm.graph.call_module(name, (nodes[0].args[0],))
        parts = gm.graph.call_function(torch.split, (y, [m.out_features for m in ms]), {"dim": -1})
    y.meta["einc_path"] = parts.meta["einc_path"] = nodes[0].meta.get("einc_path", ())
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


# ---------------------------------------------------------------- fuse_attention


def fuse_attention(gm: fx.GraphModule) -> int:
    """``torch.matmul(softmax(torch.matmul(q, kt) * c, dim=-1), v)`` -> ``F.scaled_dot_product_attention``.

    The grammar's attention: ``matmul(scaled=true)`` multiplies ``q @ kt`` by ``c = 1/sqrt(d)``
    (d: q's last dim), softmax over the last dim, then ``matmul`` with v. That is
    ``F.scaled_dot_product_attention(q, kt.transpose(-2, -1), v, scale=c)`` whenever q, kt and
    v have the same leading dims (known from the graph's shapes); an unscaled first matmul is
    ``scale=1.0``. ``kt`` is usually a transpose of the last two dims of some k: then k itself
    is passed. Rewritten only when the intermediate values have no other use.
    """
    count = 0
    for out in list(gm.graph.nodes):
        m = _attention(out)
        if m is None:
            continue
        q, kt, v, scale, chain = m
        inner = _permutation(kt)
        swap = inner is not None and len(inner) >= 2 and inner == tuple(range(len(inner) - 2)) + (
            len(inner) - 1, len(inner) - 2)
        with gm.graph.inserting_before(out):
            k = kt.args[0] if swap else gm.graph.call_method("transpose", (kt, -2, -1))
            new = gm.graph.create_node("call_function", F.scaled_dot_product_attention, (q, k, v),
                                       {"scale": scale}, name="attention")
        if not swap:
            k.meta["einc_path"] = out.meta.get("einc_path", ())
        new.meta.update(out.meta)
        out.replace_all_uses_with(new)
        for n in [out, *chain]:
            gm.graph.erase_node(n)
        named: set[fx.Node] = set()
        for n, name in ((q, "q"), (k, "k"), (v, "v")):  # readable names in einc.emit's source
            if n.op in ("call_function", "call_method") and n not in named:
                n._rename(name)
                named.add(n)
        count += 1
    _finish(gm)
    return count


def _attention(out: fx.Node):
    """(q, kt, v, scale, [softmax, mul?, matmul]) if ``out`` ends an attention, else None."""
    if not (out.op == "call_function" and out.target is torch.matmul and len(out.args) == 2
            and not out.kwargs):
        return None
    p, v = out.args
    if not (isinstance(p, fx.Node) and isinstance(v, fx.Node) and p is not v and len(p.users) == 1):
        return None
    if p.op != "call_function" or p.target not in (torch.softmax, F.softmax) or not p.args:
        return None
    kw = dict(p.kwargs)
    dim = kw.pop("dim", p.args[1] if len(p.args) > 1 else None)
    if len(p.args) > 2 or kw.get("dtype") is not None or set(kw) - {"dtype", "_stacklevel"}:
        return None
    s = p.args[0]
    if not isinstance(s, fx.Node) or len(s.users) != 1:
        return None
    chain = [p]
    scale = 1.0
    if s.op == "call_function" and s.target is operator.mul and not s.kwargs:
        a, c = s.args
        if isinstance(c, fx.Node):
            a, c = c, a
        if not isinstance(a, fx.Node) or type(c) not in (int, float) or len(a.users) != 1:
            return None
        chain.append(s)
        s, scale = a, float(c)
    if not (s.op == "call_function" and s.target is torch.matmul and len(s.args) == 2 and not s.kwargs):
        return None
    chain.append(s)
    q, kt = s.args
    shapes = [_shape(t) if isinstance(t, fx.Node) else None for t in (q, kt, v)]
    if any(sh is None or len(sh) < 2 for sh in shapes):
        return None
    (qs, ks, vs) = shapes
    if not (len(qs) == len(ks) == len(vs) and qs[:-2] == ks[:-2] == vs[:-2]):
        return None
    if dim not in (-1, len(qs)):  # softmax over the keys: the last dim (batch included: rank - 1)
        return None
    return q, kt, v, scale, chain


FUSIONS: tuple[Callable[[fx.GraphModule], int], ...] = (batch_branches, dedupe, merge_linears, fuse_attention)
