"""Derivation tree -> torch.fx GraphModule: one module per leaf, flat readable names.

The walk threads two things through the tree together: the fx nodes holding the tensors, and
the static ``Feature``s (shapes, modes, im2col grids) that the shape rules compute. Each leaf's
``lower`` hook gets both (its *input* features) and adds nodes through a ``_Context``:

* ``ctx.call(target, *args, **kwargs)``: ``"torch.X"`` / ``"torch.nn.functional.X"`` call that
  function, ``"getitem"`` / ``"add"`` / ``"mul"`` (any name of the ``operator`` module) the
  operator, ``".name"`` the tensor method ``name``;
* ``ctx.module(hint, module, *inputs)``: registers ``module`` as ``{hint}_{n}`` (``linear_0``,
  ``norm_3``; one counter per hint) and calls it; ``hint`` is the op's own ``Op.hint``;
* ``ctx.parameter(hint, parameter, init=...)``: registers a parameter (``pos_0``) and reads it;
  ``init``, required, is the source expression that made it, which einc.emit writes.

A repeated fork (``[M]*4``) is lowered once per copy, each on its own branch, so every copy has
its own modules and weights. Every node carries ``meta[PATH]`` (the tree path of the leaf that
made it, an ``einc.tree.Trail``: equal to that tuple, made in O(1)) and ``meta[BRANCH]`` (which
copy of which fork it belongs to; the copies of a repeated fork share their paths); the nodes a
hook returns also carry ``meta[FEATURE]``, their per-sample feature, which the passes read to
stay exact (keys: einc.meta).

Lowering runs no optimisation: einc.build chains lower, einc.passes.optimize and the shape
check of einc.verify.

    >>> gm = lower(tree, library, (64, 32, 32))
    >>> gm(torch.randn(2, 64, 32, 32)).shape
    torch.Size([2, 64, 32, 32])
"""

from __future__ import annotations

import importlib
import operator
from collections.abc import Callable, Sequence
from typing import Any

import torch.fx as fx
import torch.nn as nn

from .errors import EinError, LoweringError, format_path
from .infer import infer
from .meta import BRANCH, FEATURE, INFO, PATH
from .notation import show
from .ops import COL, IM, Feature, Features, Library, NotApplicable, is_builtin
from .tree import Fork, Leaf, Node, Trail, deep, gc_paused, steps
from .verify import lint

__all__ = ["HEAD", "lower"]

HEAD = "head"  # name of the classifier's linear layer (paper B.1)
ROOT = Trail()  # meta[PATH] of the input and the head

Branch = tuple[tuple[Trail, int], ...]  # meta[BRANCH]: (fork path, copy index), outermost first


def lower(tree: Node, library: Library, input_shape: Sequence[int], num_classes: int | None = None,
          text: str | None = None, output_shape: Sequence[int] | None = None) -> fx.GraphModule:
    """A GraphModule computing ``tree`` on batches of per-sample ``input_shape``; no passes run.

    ``num_classes`` appends the paper's head (B.1): mean over positions (H, W in Im mode, S in
    Col mode), then ``nn.Linear(C or D, num_classes)`` named ``head``. ``output_shape`` chooses
    the head by the shape it outputs per sample: ``(K,)`` is that head with K outputs (classes,
    labels or values); ``(C', H', W')`` or ``(S', D')`` is the paper's dense head (``dense_head``).
    ``text`` is the
    architecture string for messages and ``gm.meta["einc"]`` (default: ``show(tree)``). Shapes
    are inferred first (a ``ShapeError``, located, before any torch work); the inferred output
    shape is recorded as ``gm.meta["einc"]["output_shape"]`` and ``graph.lint()`` runs.
    """
    with gc_paused():  # a big graph's nodes would set off full collections (einc.tree.gc_paused)
        return _lower(tree, library, input_shape, num_classes, text, output_shape)


def _lower(tree: Node, library: Library, input_shape: Sequence[int], num_classes: int | None,
           text: str | None, output_shape: Sequence[int] | None) -> fx.GraphModule:
    shape = tuple(input_shape)
    target = head_shape(num_classes, output_shape)
    text = show(tree) if text is None else text
    inference = infer(tree, library, shape, text)
    ctx = _Context(library)
    x = ctx.graph.placeholder("x")
    fin = inference.input
    x.meta.update({PATH: ROOT, BRANCH: (), FEATURE: fin[0]})
    nodes, features = deep(ctx.walk(tree, [x], fin, ROOT))
    if len(nodes) != 1:
        raise LoweringError(f"the network ends in {len(nodes)} branches, not one feature")
    out = nodes[0]
    if target is not None and len(target) == 1:
        out = ctx.head(out, features[0], target[0])
    elif target is not None:
        out = ctx.dense_head(out, features[0], target)
    ctx.graph.output(out)
    gm = fx.GraphModule(ctx.root, ctx.graph, class_name="Net")
    output = target if target is not None else inference.output[0].shape
    gm.meta[INFO] = {"arch": text, "input_shape": shape,
                     "num_classes": target[0] if target is not None and len(target) == 1 else None,
                     "output_shape": tuple(output), "init": dict(ctx.inits),
                     "head": None if target is None else "dense" if len(target) > 1 else "pool"}
    lint(gm)
    return gm


def _at(trail: Trail) -> str:
    """Where an error is, for its message: made only when one is raised (O(depth))."""
    return f"at node {format_path(trail.path)}"


def head_shape(num_classes: int | None, output_shape: Sequence[int] | None) -> tuple[int, ...] | None:
    """The per-sample shape a head outputs, from ``num_classes`` and/or ``output_shape``; None: no head."""
    if output_shape is None:
        return None if num_classes is None else (_positive(num_classes, "num_classes"),)
    try:
        target = tuple(_positive(n, "output_shape") for n in output_shape)
    except TypeError:
        raise EinError(f"output_shape {output_shape!r} is not a sequence of sizes") from None
    if len(target) not in (1, 2, 3):
        raise EinError(f"output_shape {target}: a head outputs (K,), (C, H, W) or (S, D) per sample")
    if num_classes is not None and target != (num_classes,):
        raise EinError(f"num_classes={num_classes} and output_shape={target} disagree; give one of them")
    return target


def _positive(n: object, what: str) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise EinError(f"{what}: sizes must be positive integers, not {n!r}")
    return n


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
        self.path = ROOT  # the leaf being lowered
        self.op = ""  # the operation being lowered
        self.branch: Branch = ()
        self._targets: dict[str, Callable[..., Any] | str] = {}

    # -- the hook API

    def call(self, target: str, *args: Any, **kwargs: Any) -> fx.Node:
        fn = self._targets.get(target)
        if fn is None:
            try:
                fn = self._targets[target] = _resolve(target)
            except (AttributeError, ImportError, ValueError):
                raise LoweringError(f'unknown call target "{target}" ({_at(self.path)})') from None
        op = "call_method" if isinstance(fn, str) else "call_function"
        return self._node(op, fn, args, kwargs)

    def module(self, hint: str, module: nn.Module, *inputs: fx.Node) -> fx.Node:
        name = self._name(self._own_hint(hint))
        self.root.add_module(name, module)
        return self._node("call_module", name, inputs, {}, name=name)

    def parameter(self, hint: str, parameter: nn.Parameter, init: str | None = None) -> fx.Node:
        if not isinstance(init, str) or not init.strip():
            raise LoweringError(f'"{self.op}" makes parameter "{hint}" without init=, the source expression '
                                f"that made it (einc.emit writes it, so the emitted file initialises it "
                                f'the same way), e.g. init="torch.randn(1, 16) * 0.02" '
                                f"({_at(self.path)})")
        name = self._name(self._own_hint(hint))
        self.root.register_parameter(name, parameter)
        self.inits[name] = init
        return self._node("get_attr", name, (), {}, name=name)

    # -- internals

    def _own_hint(self, hint: str) -> str:
        """The op's own hint: its modules are named after it here and in einc.summary alike."""
        want = self.library[self.op].hint if self.op in self.library else hint
        if hint != want:
            raise LoweringError(f'"{self.op}" names a module or parameter "{hint}", but its hint is "{want}"; '
                                f'give Op(..., hint="{hint}") ({_at(self.path)})')
        return hint

    def _name(self, hint: str) -> str:
        n = self.counts.get(hint, 0)
        self.counts[hint] = n + 1
        return f"{hint}_{n}"

    def _node(self, op: str, target: Any, args: Sequence[Any], kwargs: dict[str, Any],
              name: str | None = None) -> fx.Node:
        node = self.graph.create_node(op, target, tuple(args), dict(kwargs), name=name)
        node.meta[PATH] = self.path
        node.meta[BRANCH] = self.branch
        return node

    def walk(self, node: Node, nodes: list[fx.Node], fs: Features, trail: Trail):
        """(nodes, features) after ``node``; a generator run by einc.tree.deep, so any depth
        lowers (``x = yield self.fork(...)`` is the recursive call). A sequence of expansions and
        leaves is walked by an explicit stack; only a fork's branches recurse."""
        for step, where in steps(node, trail):
            if isinstance(step, Leaf):
                nodes, fs = self.leaf(step, nodes, fs, where)
            else:
                nodes, fs = yield self.fork(step, nodes, fs, where)
        return nodes, fs

    def fork(self, node: Fork, nodes: list[fx.Node], fs: Features, trail: Trail):
        if len(nodes) != node.copies:
            raise LoweringError(f"a {node.copies}-way branch list after {len(nodes)} features "
                                f"({_at(trail)})")
        outs: list[fx.Node] = []
        out_fs: list[Feature] = []
        outer = self.branch
        own = len(set(nodes)) == len(nodes)  # a group-dim's pieces, not a clone's one tensor
        for i in range(node.copies):
            j = 0 if node.repeated else i  # one subtree stands for every copy; weights per copy
            self.branch = (*outer, (trail, i))
            if own and nodes[i].meta.get(BRANCH) == outer:
                nodes[i].meta[BRANCH] = self.branch
            got, got_fs = yield self.walk(node.children[j], [nodes[i]], (fs[i],), Trail(trail, j))
            if len(got) != 1:
                raise LoweringError(f"a branch must end in one feature ({_at(Trail(trail, j))})")
            outs.append(got[0])
            out_fs.append(got_fs[0])
        self.branch = outer
        return outs, tuple(out_fs)

    def leaf(self, leaf: Leaf, nodes: list[fx.Node], fs: Features,
             trail: Trail) -> tuple[list[fx.Node], Features]:
        op = self.library.get(leaf.op)
        if op is None:
            raise LoweringError(f'unknown operation "{leaf.op}" ({_at(trail)})')
        if op.lower is None:
            raise LoweringError(f'operation "{leaf.op}" has no torch lowering ({_at(trail)})')
        try:
            out_fs = op.apply(fs, leaf.args)
        except NotApplicable as e:  # infer ran first, so only a repeated copy on new input gets here
            raise LoweringError(f"{leaf.op}: {e} ({_at(trail)})") from None
        self.path, self.op = trail, leaf.op
        try:
            out = list(op.lower(self, list(nodes), fs, **dict(leaf.args)))
        except EinError:
            raise
        except Exception as e:  # a bug in a user's (a plugin's) hook: name the node, keep the cause
            if is_builtin(op):  # a bug in einc: its traceback, for the CLI's INTERNAL ERROR
                raise
            raise LoweringError(f'lowering "{leaf.op}" failed: {type(e).__name__}: {e} ({_at(trail)})') from e
        if len(out) != len(out_fs) or not all(isinstance(n, fx.Node) for n in out):
            raise LoweringError(f'"{leaf.op}" lowered to {len(out)} values; its shape rule gives '
                                f"{len(out_fs)} features ({_at(trail)})")
        for n, f in zip(out, out_fs, strict=True):
            n.meta.setdefault(FEATURE, f)  # clone returns its input node: keep the first
        return out, out_fs

    def head(self, node: fx.Node, feature: Feature, num_classes: int) -> fx.Node:
        """Paper B.1: mean over positions, then a linear map of the channels to the classes."""
        self.path, self.branch = ROOT, ()
        dims = (2, 3) if feature.mode == IM else 1
        width = feature.shape[0] if feature.mode == IM else feature.shape[-1]
        pooled = self.call(".mean", node, dims)
        pooled.meta[FEATURE] = None
        self.root.add_module(HEAD, nn.Linear(width, num_classes))
        return self._node("call_module", HEAD, (pooled,), {}, name=HEAD)

    def dense_head(self, node: fx.Node, feature: Feature, target: tuple[int, ...]) -> fx.Node:
        """Paper B.1's dense head: the features are average-pooled adaptively to the target's positions,
        then a linear map of the channels gives the target's channels at every position.

        An image target (C', H', W'): Im features pool their H, W to H', W' and a 1x1 convolution (a
        linear map of channels) maps C to C'; Col features (S, D) first gain a channel axis, as the
        paper inserts one, so their S, D pool to H', W' and 1 channel maps to C'. A sequence target
        (S', D'): the positions (S, or H*W of Im features) pool to S', then ``nn.Linear`` maps the
        channels (D, or C) to D'.
        """
        self.path, self.branch = ROOT, ()

        def step(target_: str, *args: object) -> fx.Node:
            n = self.call(target_, *args)
            n.meta[FEATURE] = None
            return n

        if len(target) == 3:
            c, h, w = target
            if feature.mode == IM:
                x, width = node, feature.shape[0]
            else:
                x, width = step(".unsqueeze", node, 1), 1
            pooled = step("torch.nn.functional.adaptive_avg_pool2d", x, (h, w))
            module: nn.Module = nn.Conv2d(width, c, kernel_size=1)
        else:
            s, d = target
            if feature.mode == IM:
                seq, width = step(".flatten", node, 2), feature.shape[0]          # (B, C, H*W)
            else:
                seq, width = step(".transpose", node, 1, 2), feature.shape[-1]    # (B, D, S)
            pooled = step(".transpose", step("torch.nn.functional.adaptive_avg_pool1d", seq, s), 1, 2)
            module = nn.Linear(width, d)
        self.root.add_module(HEAD, module)
        out = self._node("call_module", HEAD, (pooled,), {}, name=HEAD)
        out.meta[FEATURE] = Feature(tuple(target), IM if len(target) == 3 else COL)
        return out
