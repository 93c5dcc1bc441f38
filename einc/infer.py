"""Static shapes and costs of a derivation tree: no tensor, no module is built.

Walks the tree with real features (shapes, modes, im2col grids), applying each operation's
shape rule; reports the output of every layer, parameters, FLOPs and activation elements.
A repeated subtree counts once per copy. An operation that refuses its input raises
``ShapeError`` naming the node's path, its column in the string and the violated rule.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ShapeError
from .ops import Feature, Features, Library, NotApplicable, feature_for
from .tree import Fork, Leaf, Node, Path, Trail, deep, gc_paused, steps


@dataclass(frozen=True, slots=True)
class Layer:
    at: Trail  # where in the tree; ``path`` is its tuple
    op: str
    args: tuple
    inputs: Features
    outputs: Features
    params: int
    flops: int
    copies: int  # how many times a repeated subtree instantiates this layer

    @property
    def path(self) -> Path:
        return self.at.path


@dataclass(frozen=True)
class Inference:
    input: Features
    output: Features
    layers: tuple[Layer, ...]

    @property
    def params(self) -> int:
        return sum(layer.params * layer.copies for layer in self.layers)

    @property
    def flops(self) -> int:
        return sum(layer.flops * layer.copies for layer in self.layers)

    @property
    def activations(self) -> int:
        """Elements of every layer's output, per sample (what training keeps for backward)."""
        return sum(sum(f.numel for f in layer.outputs) * layer.copies for layer in self.layers)


def infer(tree: Node, library: Library, input_shape: tuple[int, ...], text: str | None = None) -> Inference:
    """Shapes and costs of ``tree`` on a per-sample input of ``input_shape`` (batch excluded)."""
    inp = (feature_for(tuple(input_shape)),)
    layers: list[Layer] = []
    with gc_paused():
        out = deep(_walk(tree, inp, Trail(), 1, library, layers, text))  # any depth the sampler's budget allows
    return Inference(inp, out, tuple(layers))


def _walk(node: Node, fs: Features, trail: Trail, copies: int, library: Library, layers: list[Layer],
          text: str | None):
    """The features after ``node``; a generator run by einc.tree.deep (``yield`` is the recursive call).

    A sequence of expansions and leaves is walked by an explicit stack; only a fork's branches
    recurse, so a long chain makes no generator per node."""
    for step, where in steps(node, trail):
        if isinstance(step, Leaf):
            fs = _leaf(step, fs, where, copies, library, layers, text)
        else:
            fs = yield _fork(step, fs, where, copies, library, layers, text)
    return fs


def _leaf(node: Leaf, fs: Features, trail: Trail, copies: int, library: Library, layers: list[Layer],
          text: str | None) -> Features:
    op = library.get(node.op)
    if op is None:
        raise ShapeError(f'unknown operation "{node.op}"', text, *_where(node), trail.path)
    try:
        out = op.apply(fs, node.args)
    except NotApplicable as e:
        raise ShapeError(f"{node.op}: {e} (input {', '.join(map(str, fs))})", text, *_where(node),
                         trail.path) from None
    cost = op.cost(fs, **dict(node.args))
    layers.append(Layer(trail, node.op, node.args, fs, out, cost.params, cost.flops, copies))
    return out


def _fork(node: Fork, fs: Features, trail: Trail, copies: int, library: Library, layers: list[Layer],
          text: str | None):
    if len(fs) != node.copies:
        raise ShapeError(f"a {node.copies}-way branch list after {len(fs)} features", text, *_where(node),
                         trail.path)
    outs: list[Feature] = []
    if node.repeated and all(f == fs[0] for f in fs):
        # one walk stands for every copy (every built-in brancher gives equal inputs)
        one = _one((yield _walk(node.children[0], fs[:1], Trail(trail, 0), copies * node.copies, library, layers,
                                text)), node, trail, text)
        outs = [one] * len(fs)
    elif node.repeated:
        for f in fs:
            outs.append(_one((yield _walk(node.children[0], (f,), Trail(trail, 0), copies, library, layers, text)),
                             node, trail, text))
    else:
        for i, (child, f) in enumerate(zip(node.children, fs, strict=True)):
            outs.append(_one((yield _walk(child, (f,), Trail(trail, i), copies, library, layers, text)),
                             node, trail, text))
    return tuple(outs)


def _one(out: Features, node: Fork, trail: Trail, text) -> Feature:
    if len(out) != 1:
        raise ShapeError("a branch must end in one feature", text, *_where(node), trail.path)
    return out[0]


def _where(node: Node) -> tuple[int, int]:
    return (node.span.line, node.span.col) if node.span else (1, 0)
