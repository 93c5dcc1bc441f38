"""Derivation tree -> torch.fx GraphModule: one module per leaf, flat readable names.

The walk threads two things through the tree together: the fx nodes holding the tensors, and
the static ``Feature``s (shapes, modes, im2col grids) that the shape rules compute. Each leaf's
``lower`` hook gets both (its *input* features) and adds nodes through a ``_Context``:

* ``ctx.call(target, *args, **kwargs)``: ``"torch.X"`` / ``"torch.nn.functional.X"`` call that
  function, ``"getitem"`` / ``"add"`` / ``"mul"`` (any name of the ``operator`` module) the
  operator, ``".name"`` the tensor method ``name``;
* ``ctx.module(hint, module, *inputs)``: registers ``module`` as ``{hint}_{n}`` (``linear_0``,
  ``norm_3``; one counter per hint) and calls it;
* ``ctx.parameter(hint, parameter, init=None)``: registers a parameter (``pos_0``) and reads it;
  ``init`` is the source expression that made it, for einc.emit.

A repeated fork (``[M]*4``) is lowered once per copy, each on its own branch, so every copy has
its own modules and weights. Every node carries ``meta["einc_path"]`` (the tree path of the leaf
that made it); the nodes a hook returns also carry ``meta["einc_feature"]``, their per-sample
feature, which the passes read to stay exact.

    >>> gm = lower(g.parse(resnet_block), (64, 32, 32))
    >>> gm(torch.randn(2, 64, 32, 32)).shape
    torch.Size([2, 64, 32, 32])
"""

from __future__ import annotations

import importlib
import operator
from typing import TYPE_CHECKING, Any, Callable

import torch
import torch.fx as fx
import torch.nn as nn

from .errors import EinError, LoweringError, format_path
from .infer import infer
from .ops import IM, Feature, Features, Library, NotApplicable, feature_for
from .tree import Expansion, Fork, Leaf, Node, Path

if TYPE_CHECKING:
    from .api import Architecture

__all__ = ["assert_same_function", "check_shapes", "lower", "lower_tree"]

HEAD = "head"  # name of the classifier's linear layer (paper B.1)


def lower(arch: "Architecture", input_shape: tuple[int, ...], num_classes: int | None = None,
          optimize: bool = True, check: bool = True) -> fx.GraphModule:
    """A GraphModule computing ``arch`` on batches of per-sample ``input_shape``.

    ``num_classes`` appends the paper's head (B.1): mean over positions (H, W in Im mode, S in
    Col mode), then ``nn.Linear(C or D, num_classes)`` named ``head``. ``optimize`` runs the
    exact rewrites of einc.passes (convolutions, permute chains, dead code), then those of
    einc.fusion (batched branches, merged linears, fused attention); they change the state
    dict's layout, and ``einc.fusion.pack_state_dict`` / ``unpack_state_dict`` convert between
    the two forms. ``check`` runs the
    result on a random batch of 2 (eval mode, no grad, its own RNG) and compares the output
    shape with the statically inferred one; ``graph.lint()`` always runs.
    """
    mode = feature_for(tuple(input_shape)).mode
    if mode != arch.mode:
        raise LoweringError(f"the architecture was parsed for {arch.mode} inputs; {tuple(input_shape)} is a "
                            f"{mode} input (parse it with this input shape)")
    return lower_tree(arch.tree, arch.grammar.library, input_shape, num_classes=num_classes,
                      optimize=optimize, check=check, text=arch.text)


def lower_tree(tree: Node, library: Library, input_shape: tuple[int, ...], num_classes: int | None = None,
               optimize: bool = True, check: bool = True, text: str | None = None) -> fx.GraphModule:
    """``lower`` for a bare tree and operation library."""
    input_shape = tuple(input_shape)
    inference = infer(tree, library, input_shape, text)  # ShapeError, located, before any torch work
    ctx = _Context(library)
    x = ctx.graph.placeholder("x")
    fin = inference.input
    x.meta.update(einc_path=(), einc_feature=fin[0])
    nodes, features = ctx.walk(tree, [x], fin, ())
    if len(nodes) != 1:
        raise LoweringError(f"the network ends in {len(nodes)} branches, not one feature")
    out = nodes[0]
    if num_classes is not None:
        out = ctx.head(out, features[0], num_classes)
    ctx.graph.output(out)
    gm = fx.GraphModule(ctx.root, ctx.graph, class_name="Net")
    gm.meta["einc"] = {"arch": text, "input_shape": input_shape, "num_classes": num_classes,
                       "init": dict(ctx.inits)}
    _lint(gm)
    if optimize:
        from .fusion import fuse
        from .passes import optimize as run_passes

        fuse(run_passes(gm))
    if check:
        _check_output(gm, _expected(inference.output[0], num_classes), input_shape)
    return gm


def _expected(feature: Feature, num_classes: int | None) -> tuple[int, ...]:
    """Per-sample output shape: the backbone's feature, or (num_classes,) with a head."""
    return (num_classes,) if num_classes is not None else feature.shape


# ---------------------------------------------------------------- verification
# NOTE: [Verification] every transform is checked the same two ways: lint plus the real output
# shape against the inferred one (check_shapes), and, in tests, equal outputs on one random
# input against the untransformed module (assert_same_function).


def check_shapes(gm: fx.GraphModule, arch: "Architecture", input_shape: tuple[int, ...],
                 batch: int = 2) -> None:
    """``gm``'s real output shape on a random batch is the one einc.infer gives for ``arch``.

    The head, if any, is read from ``gm.meta`` (einc.lower records it). Runs in eval mode
    without grad (BatchNorm statistics stay untouched) on a private RNG, so the caller's random
    stream and the module's state are as before. Raises ``LoweringError`` on a mismatch.
    """
    input_shape = tuple(input_shape)
    classes = gm.meta.get("einc", {}).get("num_classes")
    _check_output(gm, _expected(arch.infer(input_shape).output[0], classes), input_shape, batch)


def _check_output(gm: fx.GraphModule, expected: tuple[int, ...], input_shape: tuple[int, ...],
                  batch: int = 2) -> None:
    x = torch.randn(batch, *input_shape, generator=torch.Generator().manual_seed(0))
    was_training = gm.training
    gm.eval()
    try:
        with torch.no_grad():
            y = gm(x)
    except Exception as e:  # a wrong lowering; the graph and its node are in the chain
        raise LoweringError(f"the lowered network fails on a batch of {batch}: "
                            f"{type(e).__name__}: {e}") from e
    finally:
        gm.train(was_training)
    want = (batch, *expected)
    if tuple(y.shape) != want:
        raise LoweringError(f"the lowered network's output has shape {tuple(y.shape)}; "
                            f"shape inference says {want}")


def assert_same_function(a: nn.Module, b: nn.Module, input_shape: tuple[int, ...], batch: int = 2,
                         seed: int = 0, double: bool = True, rtol: float = 1e-7, atol: float = 1e-9) -> None:
    """``a`` and ``b`` give the same output on the same random input (eval mode).

    With ``double`` both run on float64 copies, so an exact rewrite (a convolution for
    unfold + matmul) differs only by rounding far below ``rtol``; the modules themselves are
    left as they were.
    """
    import copy

    x = torch.randn(batch, *input_shape, generator=torch.Generator().manual_seed(seed))
    outs = []
    for m in (a, b):
        if double:
            m = copy.deepcopy(m).double()
        was_training = m.training
        m.eval()
        with torch.no_grad():
            outs.append(m(x.double() if double else x))
        m.train(was_training)
    torch.testing.assert_close(outs[0], outs[1], rtol=rtol, atol=atol)


def _lint(gm: fx.GraphModule) -> None:
    try:
        gm.graph.lint()
    except Exception as e:  # lint failures are lowering bugs; keep the printed graph
        raise LoweringError(f"the lowered graph is malformed: {e}") from e


# ---------------------------------------------------------------- the walk


def _resolve(target: str) -> Callable[..., Any] | str:
    """A hook's target string -> the callable (or method name) fx records."""
    if target.startswith("."):
        return target[1:]
    if "." not in target:
        return getattr(operator, target)
    module, _, name = target.rpartition(".")
    return getattr(importlib.import_module(module), name)


class _Context:
    """What an op's ``lower`` hook sees: the graph being built and the module registry."""

    def __init__(self, library: Library):
        self.library = library
        self.graph = fx.Graph()
        self.root = nn.Module()
        self.counts: dict[str, int] = {}
        self.inits: dict[str, str] = {}
        self.path: Path = ()
        self._targets: dict[str, Callable[..., Any] | str] = {}

    # -- the hook API

    def call(self, target: str, *args: Any, **kwargs: Any) -> fx.Node:
        fn = self._targets.get(target)
        if fn is None:
            try:
                fn = self._targets[target] = _resolve(target)
            except (AttributeError, ImportError, ValueError):
                where = format_path(self.path)
                raise LoweringError(f'unknown call target "{target}" (at node {where})') from None
        op = "call_method" if isinstance(fn, str) else "call_function"
        return self._node(op, fn, args, kwargs)

    def module(self, hint: str, module: nn.Module, *inputs: fx.Node) -> fx.Node:
        name = self._name(hint)
        self.root.add_module(name, module)
        return self._node("call_module", name, inputs, {}, name=name)

    def parameter(self, hint: str, parameter: nn.Parameter, init: str | None = None) -> fx.Node:
        name = self._name(hint)
        self.root.register_parameter(name, parameter)
        if init is not None:
            self.inits[name] = init
        return self._node("get_attr", name, (), {}, name=name)

    # -- internals

    def _name(self, hint: str) -> str:
        n = self.counts.get(hint, 0)
        self.counts[hint] = n + 1
        return f"{hint}_{n}"

    def _node(self, op: str, target: Any, args: tuple, kwargs: dict, name: str | None = None) -> fx.Node:
        node = self.graph.create_node(op, target, tuple(args), dict(kwargs), name=name)
        node.meta["einc_path"] = self.path
        return node

    def walk(self, node: Node, nodes: list[fx.Node], fs: Features,
             path: Path) -> tuple[list[fx.Node], Features]:
        if isinstance(node, Leaf):
            return self.leaf(node, nodes, fs, path)
        if isinstance(node, Expansion):
            for i, child in enumerate(node.children):
                nodes, fs = self.walk(child, nodes, fs, path + (i,))
            return nodes, fs
        assert isinstance(node, Fork)
        if len(nodes) != node.copies:
            raise LoweringError(f"a {node.copies}-way branch list after {len(nodes)} features "
                                f"(at node {format_path(path)})")
        outs: list[fx.Node] = []
        out_fs: list[Feature] = []
        for i in range(node.copies):
            j = 0 if node.repeated else i  # one subtree stands for every copy; weights per copy
            got, got_fs = self.walk(node.children[j], [nodes[i]], (fs[i],), path + (j,))
            if len(got) != 1:
                raise LoweringError(f"a branch must end in one feature (at node {format_path(path + (j,))})")
            outs.append(got[0])
            out_fs.append(got_fs[0])
        return outs, tuple(out_fs)

    def leaf(self, leaf: Leaf, nodes: list[fx.Node], fs: Features,
             path: Path) -> tuple[list[fx.Node], Features]:
        where = f"at node {format_path(path)}"
        op = self.library.get(leaf.op)
        if op is None:
            raise LoweringError(f'unknown operation "{leaf.op}" ({where})')
        if op.lower is None:
            raise LoweringError(f'operation "{leaf.op}" has no torch lowering ({where})')
        try:
            out_fs = op.apply(fs, leaf.args)
        except NotApplicable as e:  # infer ran first, so only a repeated copy on new input gets here
            raise LoweringError(f"{leaf.op}: {e} ({where})") from None
        self.path = path
        try:
            out = list(op.lower(self, list(nodes), fs, **dict(leaf.args)))
        except EinError:
            raise
        except Exception as e:  # a hook's bug (e.g. a plugin's): name the node, keep the cause
            raise LoweringError(f'lowering "{leaf.op}" failed: {type(e).__name__}: {e} ({where})') from e
        if len(out) != len(out_fs) or not all(isinstance(n, fx.Node) for n in out):
            raise LoweringError(f'"{leaf.op}" lowered to {len(out)} values; its shape rule gives '
                                f"{len(out_fs)} features ({where})")
        for n, f in zip(out, out_fs):
            n.meta.setdefault("einc_feature", f)  # clone returns its input node: keep the first
        return out, out_fs

    def head(self, node: fx.Node, feature: Feature, num_classes: int) -> fx.Node:
        """Paper B.1: mean over positions, then a linear map of the channels to the classes."""
        self.path = ()
        dims = (2, 3) if feature.mode == IM else 1
        width = feature.shape[0] if feature.mode == IM else feature.shape[-1]
        pooled = self.call(".mean", node, dims)
        pooled.meta["einc_feature"] = None
        self.root.add_module(HEAD, nn.Linear(width, num_classes))
        return self._node("call_module", HEAD, (pooled,), {}, name=HEAD)
