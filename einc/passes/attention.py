"""``softmax(q @ k^T * c) @ v``, as the einspace grammar writes attention, becomes one
``F.scaled_dot_product_attention``."""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F

from ..meta import PATH
from .cost import CPU, CostModel
from .graph import finish, permutation, shape_of, swaps_last_two

__all__ = ["fuse_attention"]


def fuse_attention(gm: fx.GraphModule, cost: CostModel = CPU) -> int:
    """``torch.matmul(softmax(torch.matmul(q, kt) * c, dim=-1), v)`` -> ``F.scaled_dot_product_attention``.

    The grammar's attention: ``matmul(scaled=true)`` multiplies ``q @ kt`` by ``c = 1/sqrt(d)``
    (d: q's last dim), softmax over the last dim, then ``matmul`` with v. That is
    ``F.scaled_dot_product_attention(q, kt.transpose(-2, -1), v, scale=c)`` whenever q, kt and
    v have the same leading dims (known from the graph's shapes); an unscaled first matmul is
    ``scale=1.0``. ``kt`` is usually a transpose of the last two dims of some k: then k itself
    is passed. Rewritten only when the intermediate values have no other use. The fused kernel
    always pays: ``cost`` is not consulted.
    """
    count = 0
    for out in list(gm.graph.nodes):
        m = _attention(out)
        if m is None:
            continue
        q, kt, v, scale, chain = m
        inner = permutation(kt)
        k = kt.args[0] if inner is not None and len(inner) >= 2 and swaps_last_two(kt, len(inner)) else None
        with gm.graph.inserting_before(out):
            if not isinstance(k, fx.Node):  # kt is no transpose of some k: make one
                k = gm.graph.call_method("transpose", (kt, -2, -1))
                k.meta[PATH] = out.meta.get(PATH, ())
            new = gm.graph.create_node("call_function", F.scaled_dot_product_attention, (q, k, v),
                                       {"scale": scale}, name="attention")
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
    finish(gm)
    return count


def _softmax_dim(p: fx.Node) -> Any:
    """The dim of ``p`` if it is a plain softmax (no dtype), else None."""
    if p.op != "call_function" or p.target not in (torch.softmax, F.softmax) or not p.args:
        return None
    kw = dict(p.kwargs)
    dim = kw.pop("dim", p.args[1] if len(p.args) > 1 else None)
    if len(p.args) > 2 or kw.get("dtype") is not None or set(kw) - {"dtype", "_stacklevel"}:
        return None
    return dim


def _attention(out: fx.Node) -> tuple[fx.Node, fx.Node, fx.Node, float, list[fx.Node]] | None:
    """(q, kt, v, scale, [softmax, mul?, matmul]) if ``out`` ends an attention, else None."""
    if not (out.op == "call_function" and out.target is torch.matmul and len(out.args) == 2
            and not out.kwargs):
        return None
    p, v = out.args
    if not (isinstance(p, fx.Node) and isinstance(v, fx.Node) and p is not v and len(p.users) == 1):
        return None
    dim = _softmax_dim(p)
    if dim is None:
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
        if (not isinstance(a, fx.Node) or isinstance(c, bool) or not isinstance(c, (int, float))
                or len(a.users) != 1):
            return None
        chain.append(s)
        s, scale = a, float(c)
    if not (s.op == "call_function" and s.target is torch.matmul and len(s.args) == 2 and not s.kwargs):
        return None
    chain.append(s)
    q, kt = s.args
    if not isinstance(q, fx.Node) or not isinstance(kt, fx.Node):
        return None
    qs, ks, vs = shape_of(q), shape_of(kt), shape_of(v)
    if qs is None or ks is None or vs is None or len(qs) < 2:
        return None
    if not (len(qs) == len(ks) == len(vs) and qs[:-2] == ks[:-2] == vs[:-2]):
        return None
    if dim not in (-1, len(qs)):  # softmax over the keys: the last dim (batch included: rank - 1)
        return None
    return q, kt, v, scale, chain
