"""Batching rules: per torch target, how one op on each of b branches becomes one op on stacked values.

``RULES`` maps a ``call_function`` target (a function) or a ``call_method`` target (a method
name) to its rule; ``MODULE_RULES`` maps a module type. A rule gets the ``Builder``, the first
branch's node, its arguments with the block's values as ``Value`` (NOTE: [Stacked values] in
einc.passes.stacking) and the node's per-branch shape, and returns the op's stacked value, or
raises ``Refuse`` where the op has no exact batched form (or, asked of the cost model, none
worth having). An op missing from the tables leaves its block unbatched.
"""

from __future__ import annotations

import operator
import re
import string
from collections.abc import Callable, Sequence
from math import prod, sqrt
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from ..meta import INFO
from .graph import BINARY, SOFTMAX, UNARY, concat_linears, shape_of, stacked_parameter
from .provenance import Cat, Reshape, take
from .stacking import Builder, Refuse, Shape, Value, shift

__all__ = ["MODULE_RULES", "RULES", "ModuleRule", "Rule", "stack_parameter", "stack_split"]

Args = tuple[Any, ...]
Kwargs = dict[str, Any]
Rule = Callable[[Builder, fx.Node, Args, Kwargs, Shape | None], Value]
ModuleRule = Callable[[Builder, tuple[fx.Node, ...], Value, Shape | None], Value]


def _values(args: Sequence[Any], kwargs: Kwargs) -> list[Value]:
    return [a for a in (*args, *kwargs.values()) if isinstance(a, Value)]


def _fn(n: fx.Node) -> Callable[..., Any]:
    """The function a ``call_function`` node calls."""
    assert callable(n.target)
    return n.target


def _stacked_input(args: Args, kwargs: Kwargs) -> tuple[Value, int | None]:
    """The first argument, stacked, with its rank (batch included); no other argument a value."""
    x = args[0]
    if not isinstance(x, Value) or x.kind != "stacked" or _values(args[1:], kwargs):
        raise Refuse
    return x, (len(x.shape) + 1 if x.shape is not None else None)


# ---------------------------------------------------------------- functions


def _binary(bt: Builder, n: fx.Node, args: Args, kwargs: Kwargs, shape: Shape | None) -> Value:
    if _values((), kwargs):
        raise Refuse
    new = [bt.lift(a) if isinstance(a, Value) else a for a in args]
    return bt.stacked(bt.function(_fn(n), *new, like=n, **kwargs), shape)


def _pointwise(bt: Builder, n: fx.Node, args: Args, kwargs: Kwargs, shape: Shape | None) -> Value:
    x, _ = _stacked_input(args, kwargs)
    return bt.stacked(bt.function(_fn(n), x.node, *args[1:], like=n, **kwargs), shape)


def _softmax(bt: Builder, n: fx.Node, args: Args, kwargs: Kwargs, shape: Shape | None) -> Value:
    x, rank = _stacked_input(args, kwargs)
    rest, kw = list(args[1:]), dict(kwargs)
    if "dim" in kw:
        kw["dim"] = shift(kw["dim"], rank)
    elif rest:
        rest[0] = shift(rest[0], rank)
    else:
        raise Refuse  # softmax's implicit dim
    return bt.stacked(bt.function(_fn(n), x.node, *rest, like=n, **kw), shape)


def _chunk(bt: Builder, n: fx.Node, args: Args, kwargs: Kwargs, shape: Shape | None) -> Value:
    dim = kwargs.get("dim", args[2] if len(args) > 2 else 0)
    x = args[0]
    if not isinstance(x, Value) or x.kind != "stacked" or isinstance(args[1], Value):
        raise Refuse
    rank = len(x.shape) + 1 if x.shape is not None else None
    pieces = bt.function(torch.chunk, x.node, args[1], like=n, dim=shift(dim, rank))
    return bt.stacked(pieces, None, tuple_=True)


def _getitem(bt: Builder, n: fx.Node, args: Args, kwargs: Kwargs, shape: Shape | None) -> Value:
    x = args[0]
    if not (isinstance(x, Value) and x.kind == "stacked" and x.tuple_ and type(args[1]) is int):
        raise Refuse
    return bt.stacked(bt.function(operator.getitem, x.node, args[1], like=n), shape)


def _cat(bt: Builder, n: fx.Node, args: Args, kwargs: Kwargs, shape: Shape | None) -> Value:
    dim = kwargs.get("dim", args[1] if len(args) > 1 else 0)
    items = args[0]
    if not isinstance(items, (list, tuple)) or not all(isinstance(v, Value) for v in items):
        raise Refuse
    r = next((len(v.shape) + 1 for v in items if v.shape is not None), None)
    joined = bt.function(torch.cat, [bt.expand(v) for v in items], like=n, dim=shift(dim, r))
    return bt.stacked(joined, shape)


def _unfold(bt: Builder, n: fx.Node, args: Args, kwargs: Kwargs, shape: Shape | None) -> Value:
    x, _ = _stacked_input(args, kwargs)
    flat = bt.method("flatten", x.node, 1, 2, like=n)
    cols = bt.function(F.unfold, flat, *args[1:], like=n, **kwargs)
    return bt.stacked(bt.method("unflatten", cols, 1, (bt.b, -1), like=n), None)


# ---------------------------------------------------------------- tensor methods


def _permute(bt: Builder, n: fx.Node, args: Args, kwargs: Kwargs, shape: Shape | None) -> Value:
    x, rank = _stacked_input(args, kwargs)
    dims = args[1] if len(args) == 2 and isinstance(args[1], (tuple, list)) else args[1:]
    if kwargs or not dims or not all(type(d) is int for d in dims) or dims[0] != 0:
        raise Refuse
    order = [shift(d, rank) for d in dims[1:]]
    return bt.stacked(bt.method("permute", x.node, 0, 1, *order, like=n), shape)


def _transpose(bt: Builder, n: fx.Node, args: Args, kwargs: Kwargs, shape: Shape | None) -> Value:
    x, rank = _stacked_input(args, kwargs)
    if kwargs or len(args) != 3:
        raise Refuse
    a, b = shift(args[1], rank), shift(args[2], rank)
    return bt.stacked(bt.method("transpose", x.node, a, b, like=n), shape)


def _reshape(bt: Builder, n: fx.Node, args: Args, kwargs: Kwargs, shape: Shape | None) -> Value:
    x, _ = _stacked_input(args, kwargs)
    sizes = args[1] if len(args) == 2 and isinstance(args[1], (tuple, list)) else args[1:]
    if (kwargs or not sizes or not all(type(s) is int for s in sizes) or sizes[0] != -1
            or -1 in sizes[1:]):
        raise Refuse  # only per-sample reshapes: the batch as -1, every other size given
    return bt.stacked(bt.method(str(n.target), x.node, -1, bt.b, *sizes[1:], like=n), shape)


def _contiguous(bt: Builder, n: fx.Node, args: Args, kwargs: Kwargs, shape: Shape | None) -> Value:
    x, _ = _stacked_input(args, kwargs)
    return bt.stacked(bt.method("contiguous", x.node, like=n), shape)


def _reduce(bt: Builder, n: fx.Node, args: Args, kwargs: Kwargs, shape: Shape | None) -> Value:
    x, rank = _stacked_input(args, kwargs)
    dims = kwargs.get("dim", args[1] if len(args) > 1 else None)
    if dims is None:
        raise Refuse
    new = tuple(shift(d, rank) for d in dims) if isinstance(dims, (tuple, list)) else shift(dims, rank)
    kw = {k: v for k, v in kwargs.items() if k != "dim"}
    return bt.stacked(bt.node("call_method", n.target, (x.node, new, *args[2:]), kw, like=n), shape)


RULES: dict[Callable[..., Any] | str, Rule] = {
    **dict.fromkeys(BINARY, _binary),
    **dict.fromkeys(UNARY, _pointwise),
    **dict.fromkeys(SOFTMAX, _softmax),
    torch.chunk: _chunk,
    operator.getitem: _getitem,
    torch.cat: _cat,
    F.unfold: _unfold,
    "permute": _permute,
    "transpose": _transpose,
    "reshape": _reshape,
    "view": _reshape,
    "contiguous": _contiguous,
    "mean": _reduce,
    "sum": _reduce,
}


# ---------------------------------------------------------------- values from outside the branches


def stack_split(bt: Builder, nodes: tuple[fx.Node, ...], shape: Shape | None) -> Value:
    """b pieces of ``torch.chunk(x, b, dim=d)``, piece i on branch i: x with d unflattened."""
    chunk = nodes[0].args[0]
    assert isinstance(chunk, fx.Node)
    x = chunk.args[0]
    dim = chunk.kwargs.get("dim", chunk.args[2] if len(chunk.args) > 2 else 0)
    chunks = chunk.args[1] if len(chunk.args) > 1 else chunk.kwargs.get("chunks")
    whole = shape_of(x)
    if (chunks != bt.b or [n.args[1] for n in nodes] != list(range(bt.b)) or shape is None
            or whole is None or type(dim) is not int or not isinstance(x, fx.Node)):
        raise Refuse
    d = shift(dim, len(whole) + 1, negative=False) - 1  # dim of x, batch included
    if whole[d - 1] != bt.b * shape[d - 1]:
        raise Refuse  # unequal chunks
    parts = bt.method("unflatten", x, d, (bt.b, -1), like=nodes[0])
    return bt.stacked(bt.method("movedim", parts, d, 1, like=nodes[0]), shape)


def stack_parameter(bt: Builder, nodes: tuple[fx.Node, ...], shape: Shape | None) -> Value:
    """Per-branch tables (1, *s) broadcasting over the batch: one (1, b, *s) table."""
    n = nodes[0]
    targets = [str(m.target) for m in nodes]
    ps = [getattr(bt.gm, t) for t in targets]
    if not all(isinstance(p, nn.Parameter) for p in ps) or ps[0].dim() == 0 or ps[0].shape[0] != 1:
        raise Refuse
    rest = tuple(ps[0].shape[1:])
    value = nn.Parameter(torch.cat([p.detach().unsqueeze(1) for p in ps], dim=1),
                         requires_grad=ps[0].requires_grad)
    name = targets[0]
    init = bt.gm.meta.get(INFO, {}).get("init", {}).get(name)
    bt.todo.params.append((name, value, _init_like(init, tuple(value.shape))))
    unit = (1, 1, *rest)
    bt.todo.recipes.append((name, lambda: Cat(tuple(Reshape(take(bt.gm, t), unit) for t in targets), 1)))
    bt.todo.old_params += targets
    return bt.stacked(bt.node("get_attr", name, (), like=n), shape or rest)


def _init_like(source: str | None, shape: Shape) -> str:
    """einc.lower's init source for a table (``torch.randn(1, 256, 512) * 0.02``), at ``shape``."""
    sizes = ", ".join(map(str, shape))
    if source:
        m = re.fullmatch(r"torch\.(randn|zeros|ones|rand)\([\d, ]*\)(.*)", source)
        if m:
            return f"torch.{m.group(1)}({sizes}){m.group(2)}"
    return f"torch.zeros({sizes})"


# ---------------------------------------------------------------- modules with per-branch state


def _modules(bt: Builder, nodes: tuple[fx.Node, ...]) -> tuple[list[Any], list[str]]:
    targets = [str(k.target) for k in nodes]
    return [bt.modules[t] for t in targets], targets


def _linear(bt: Builder, nodes: tuple[fx.Node, ...], x: Value, shape: Shape | None) -> Value:
    """b linears, in the cheapest exact form for their input and place (see the cost model)."""
    n, b = nodes[0], bt.b
    ms, targets = _modules(bt, nodes)
    m: nn.Linear = ms[0]
    if shape is None:
        raise Refuse
    flops = 2 * prod(shape[:-1]) * m.in_features * m.out_features  # per sample and branch
    bound = f"{1 / sqrt(m.in_features)!r}"
    uniform = f"{{}}.uniform_(-{bound}, {bound})"  # nn.Linear's initialisation
    weights = [f"{t}.weight" for t in targets]
    biases = [f"{t}.bias" for t in targets]
    if n is bt.block.outputs[0] and bt.block.kind == "add":
        # The block's result is the sum of the b linears: one linear. With a shared input x,
        # sum_i (x W_i^T + c_i) = x (sum_i W_i)^T + sum_i c_i; with stacked inputs h_i, it is
        # [h_0 ... h_b-1] [W_0 ... W_b-1]^T + sum_i c_i ("row-parallel").
        if x.kind == "shared":
            w = bt.new_param(f"{n.target}_weight", [k.weight for k in ms], (1, m.out_features, m.in_features),
                             uniform, weights, like=n)
            w = bt.method("sum", w, 0, like=n)
            h = x.node
        else:
            w = bt.new_param(f"{n.target}_weight", [k.weight for k in ms], (m.out_features, m.in_features),
                             uniform, weights, like=n, dim=1)
            h = bt.method("flatten", bt.method("movedim", x.node, 1, -2, like=n), -2, -1, like=n)
        c = None
        if m.bias is not None:
            c = bt.new_param(f"{n.target}_bias", [k.bias for k in ms], (1, m.out_features), uniform, biases,
                             like=n)
            c = bt.method("sum", c, 0, like=n)
        bt.todo.old_modules += targets
        return Value("done", bt.function(F.linear, h, w, c, like=n), shape)
    if x.kind == "shared":  # one linear with the weights of all b concatenated
        if not bt.cost.wide_ok(m.in_features, b * m.out_features):
            raise Refuse
        bt.replace_modules(targets, concat_linears(ms), ("weight", "bias"))
        y = bt.node("call_module", n.target, (x.node,), like=n)
        y = bt.method("unflatten", y, -1, (b, m.out_features), like=n)
        return bt.stacked(bt.method("movedim", y, -2, 1, like=n), shape)
    if not bt.cost.batched_ok(flops):
        raise Refuse  # a large batched matmul (bmm) runs slower than b matmuls on CPU
    r = len(shape)
    mid = string.ascii_lowercase[2:2 + r - 1]  # c, d, ...: the per-sample dims before the last
    w = bt.new_param(f"{n.target}_weight", [k.weight for k in ms], (1, m.out_features, m.in_features),
                     uniform, weights, like=n)
    y = bt.function(torch.einsum, f"zb{mid}i,boi->zb{mid}o", x.node, w, like=n)
    if m.bias is not None:
        c = bt.new_param(f"{n.target}_bias", [k.bias for k in ms], (1,) * r + (m.out_features,),
                         uniform, biases, like=n)
        y = bt.function(operator.add, y, c, like=n)
    bt.todo.old_modules += targets
    return bt.stacked(y, shape)


def _conv2d(bt: Builder, nodes: tuple[fx.Node, ...], x: Value, shape: Shape | None) -> Value:
    """b convolutions: of one shared tensor, one with b times the outputs; of b tensors, one
    grouped convolution over the branches' channels side by side (where the cost model says it pays)."""
    n, b = nodes[0], bt.b
    ms, targets = _modules(bt, nodes)
    m: nn.Conv2d = ms[0]
    if x.kind == "shared":
        if m.groups != 1:
            raise Refuse
        bt.replace_modules(targets, _like_conv(ms, grouped=False), ("weight", "bias"))
        y = bt.node("call_module", n.target, (x.node,), like=n)
        return bt.stacked(bt.method("unflatten", y, 1, (b, m.out_channels), like=n), shape)
    if shape is None or x.shape is None:
        raise Refuse
    kh, kw = m.kernel_size
    flops = 2 * (m.in_channels // m.groups) * kh * kw * prod(shape)  # per sample and branch
    if not bt.cost.grouped_conv_ok(flops):
        raise Refuse
    # (B, b, C, H, W) -> (B, b*C, H, W): branch i's channels are group i's (i*C ... i*C + C-1)
    flat = bt.method("flatten", x.node, 1, 2, like=n)
    bt.replace_modules(targets, _like_conv(ms, grouped=True), ("weight", "bias"))
    y = bt.node("call_module", n.target, (flat,), like=n)
    return bt.stacked(bt.method("unflatten", y, 1, (b, m.out_channels), like=n), shape)


def _batchnorm2d(bt: Builder, nodes: tuple[fx.Node, ...], x: Value, shape: Shape | None) -> Value:
    """b BatchNorms over C channels are one over b * C."""
    n, b = nodes[0], bt.b
    ms, targets = _modules(bt, nodes)
    m: nn.BatchNorm2d = ms[0]
    flat = (bt.method("flatten", x.node, 1, 2, like=n) if x.kind == "stacked"
            else bt.method("repeat", x.node, 1, b, 1, 1, like=n))
    bt.replace_modules(targets, _like_batchnorm(ms), ("weight", "bias", "running_mean", "running_var"),
                       same=("num_batches_tracked",))
    y = bt.node("call_module", n.target, (flat,), like=n)
    return bt.stacked(bt.method("unflatten", y, 1, (b, m.num_features), like=n), shape)


def _layernorm(bt: Builder, nodes: tuple[fx.Node, ...], x: Value, shape: Shape | None) -> Value:
    """Normalise (once, if shared), then each branch's affine map."""
    n = nodes[0]
    ms, targets = _modules(bt, nodes)
    m: nn.LayerNorm = ms[0]
    ns = tuple(m.normalized_shape)
    y = bt.function(F.layer_norm, x.node, ns, None, None, m.eps, like=n)
    if not m.elementwise_affine:
        return Value(x.kind, y, shape) if x.kind == "shared" else bt.stacked(y, shape)
    if shape is None:
        raise Refuse
    y = bt.lift(Value(x.kind, y, shape)) if x.kind == "shared" else y
    unit = (1,) + (1,) * (len(shape) - len(ns)) + ns
    w = bt.new_param(f"{n.target}_weight", [k.weight for k in ms], unit, "torch.ones({})",
                     [f"{t}.weight" for t in targets], like=n, raw=True)
    y = bt.function(operator.mul, y, w, like=n)
    if getattr(m, "bias", None) is not None:
        bias = bt.new_param(f"{n.target}_bias", [k.bias for k in ms], unit, "torch.zeros({})",
                            [f"{t}.bias" for t in targets], like=n, raw=True)
        y = bt.function(operator.add, y, bias, like=n)
    bt.todo.old_modules += targets
    return bt.stacked(y, shape)


MODULE_RULES: dict[type[nn.Module], ModuleRule] = {
    nn.Linear: _linear, nn.Conv2d: _conv2d, nn.BatchNorm2d: _batchnorm2d, nn.LayerNorm: _layernorm,
}


def _like_conv(ms: list[nn.Conv2d], grouped: bool) -> nn.Conv2d:
    """One convolution with the b convolutions' filters side by side: on one input (b times the
    outputs) or, ``grouped``, on the b inputs' channels side by side (b times the groups)."""
    m, b = ms[0], len(ms)
    ins, groups = (m.in_channels * b, m.groups * b) if grouped else (m.in_channels, m.groups)
    new = nn.Conv2d(ins, m.out_channels * b, m.kernel_size, stride=m.stride,  # type: ignore[arg-type]
                    padding=m.padding, dilation=m.dilation, groups=groups,  # type: ignore[arg-type]
                    bias=m.bias is not None, padding_mode=m.padding_mode, device="meta", dtype=m.weight.dtype)
    weight = stacked_parameter([k.weight for k in ms])
    assert weight is not None
    new.weight = weight
    bias = stacked_parameter([k.bias for k in ms])
    if bias is not None:
        new.bias = bias
    return new.train(m.training)


def _present(t: torch.Tensor | None) -> torch.Tensor:
    assert t is not None  # BatchNorm's affine parameters and running statistics, where enabled
    return t


def _like_batchnorm(ms: list[nn.BatchNorm2d]) -> nn.BatchNorm2d:
    m = ms[0]
    new = nn.BatchNorm2d(m.num_features * len(ms), eps=m.eps, momentum=m.momentum, affine=m.affine,
                         track_running_stats=m.track_running_stats, device="meta",
                         dtype=_present(m.weight if m.affine else m.running_mean).dtype)
    if m.affine:
        weight, bias = stacked_parameter([k.weight for k in ms]), stacked_parameter([k.bias for k in ms])
        assert weight is not None and bias is not None
        new.weight, new.bias = weight, bias
    if m.track_running_stats:
        new.running_mean = torch.cat([_present(k.running_mean) for k in ms])
        new.running_var = torch.cat([_present(k.running_var) for k in ms])
        new.num_batches_tracked = _present(m.num_batches_tracked).clone()
    return new.train(m.training)
