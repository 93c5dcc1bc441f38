"""Mutation and crossover of derivation trees, valid by construction and within budget.

Mutation (paper 4.1): pick a nonterminal node uniformly, resample its subtree in that node's
own state, keep the rest of the tree as it was. A different replacement can change the
features that later siblings receive, so the whole tree is re-checked (derivation and
shapes) and the mutation retried, a bounded number of times. Inside a repeated branch the
one subtree stands for every copy, so a mutation there changes all copies alike.

Crossover: swap a subtree of one parent for a subtree of the other that is rooted at the same
nonterminal and has the same input state (features and declared params) and the same output
features; the child is then valid without any retry. When no such pair exists (for instance
two trees with no nonterminal in a common state but the root, or identical parents),
``crossover`` returns None.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .derivation import parse
from .errors import ArchError
from .infer import Inference, infer
from .notation import show
from .ops import Feature, Features, feature_for, mode_of
from .sample import Budget, Sampler, SamplingError
from .table import Branches, OpCall, Ref, RuleTable, merge_params
from .tree import Expansion, Fork, Leaf, Node, Path, counts, deep, replace_at

DEFAULT_BUDGET = Budget()
"""crossover's budget when none is given: the sampler's defaults."""


@dataclass(frozen=True)
class NodeState:
    path: Path
    node: Expansion
    inputs: Features
    uparams: tuple
    depth: int
    mult: int
    outputs: Features


def node_states(tree: Expansion, table: RuleTable, input_shape: tuple[int, ...]) -> list[NodeState]:
    """The state every nonterminal node of a valid tree is expanded in, parents first."""
    out: list[NodeState] = []
    deep(_visit(tree, (feature_for(tuple(input_shape)),), table.start.params, (), 0, 1, table, out))
    out.sort(key=lambda s: s.path)
    return out


def _visit(node: Node, fs: Features, up: tuple, path: Path, depth: int, mult: int, table: RuleTable,
           out: list[NodeState]):
    """The features after ``node``; a generator run by einc.tree.deep (any depth)."""
    lib = table.library
    if isinstance(node, Leaf):
        return lib[node.op].apply(fs, node.args)
    assert isinstance(node, Expansion)
    alt = _alternative_of(node, table, fs, up)
    fin = fs
    for i, (child, el) in enumerate(zip(node.children, alt.body, strict=True)):
        if isinstance(child, Fork):
            outs: list[Feature] = []
            for j, f in enumerate(fs):
                k = 0 if child.repeated else j
                if child.repeated and j:
                    outs.append(outs[0])
                    continue
                ref = el.arm_for({"m": mode_of(fs), "b": len(fs), **dict(up)}).items[k]
                outs.append((yield _visit(child.children[k], (f,), merge_params(up, ref.sets), path + (i, k),
                                          depth + 1, mult * (child.copies if child.repeated else 1), table, out))[0])
            fs = tuple(outs)
        elif isinstance(child, Expansion):
            fs = yield _visit(child, fs, merge_params(up, el.sets), path + (i,), depth + 1, mult, table, out)
        else:
            fs = yield _visit(child, fs, up, path + (i,), depth + 1, mult, table, out)
    out.append(NodeState(path, node, fin, up, depth, mult, fs))
    return fs


def _alternative_of(node: Expansion, table: RuleTable, fs: Features, up: tuple):
    rule = table.rule_for(node.head, {"m": mode_of(fs), "b": len(fs), **dict(up)})
    for alt in rule.alternatives if rule else ():
        if alt.label != node.label or len(alt.body) != len(node.children):
            continue
        if all(_matches(el, c) for el, c in zip(alt.body, node.children, strict=True)):
            return alt
    raise ArchError(f'node "{node.head}" is not a derivation of the grammar here')


def _matches(el, child: Node) -> bool:
    if isinstance(el, OpCall):
        return isinstance(child, Leaf) and child.op == el.op and child.args == el.args
    if isinstance(el, Ref):
        return isinstance(child, Expansion) and child.head == el.name
    return isinstance(el, Branches) and isinstance(child, Fork)



def within(tree: Expansion, inference: Inference, budget: Budget) -> bool:
    c = counts(tree)
    return (inference.params <= budget.max_params and inference.flops <= budget.max_flops
            and inference.activations <= budget.max_activations
            and c.nonterminals + c.terminals <= budget.max_nodes and c.depth <= 2 * budget.max_depth + 2)


def is_valid(tree: Expansion, table: RuleTable, input_shape: tuple[int, ...], budget: Budget) -> bool:
    """A derivation of ``table`` (round-trips through its string), shape-valid, within budget."""
    try:
        mode = feature_for(tuple(input_shape)).mode
        if parse(show(tree), table, mode) != tree:
            return False
        return within(tree, infer(tree, table.library, input_shape), budget)
    except ArchError:
        return False


def mutate(tree: Expansion, sampler: Sampler, rng: random.Random, max_tries: int = 50) -> Expansion:
    """A valid tree differing from ``tree`` in exactly one resampled subtree (node chosen uniformly)."""
    states = node_states(tree, sampler.table, sampler.input[0].shape)
    for _ in range(max_tries):
        st = states[rng.randrange(len(states))]
        try:
            return mutate_at(tree, st.path, sampler, rng, tries=2, states=states)
        except SamplingError:
            continue
    raise SamplingError(f"no valid mutation found in {max_tries} tries")


def mutate_at(tree: Expansion, path: Path, sampler: Sampler, rng: random.Random, tries: int = 10,
              states: list[NodeState] | None = None) -> Expansion:
    """``tree`` with the nonterminal node at ``path`` resampled (differently), all else kept."""
    shape = sampler.input[0].shape
    states = states or node_states(tree, sampler.table, shape)
    st = next((s for s in states if s.path == path), None)
    if st is None:
        raise SamplingError(f"no nonterminal node at {path}")
    whole = infer(tree, sampler.table.library, shape)
    inside = [layer for layer in whole.layers if layer.path[:len(path)] == path]
    c = counts(st.node)
    budget = sampler.budget.scaled_left((
        whole.params - sum(layer.params * layer.copies for layer in inside),
        whole.flops - sum(layer.flops * layer.copies for layer in inside),
        whole.activations - sum(sum(f.numel for f in layer.outputs) * layer.copies for layer in inside),
        _size(tree) - c.nonterminals - c.terminals))
    if min(budget.max_params, budget.max_flops, budget.max_activations, budget.max_nodes) < 0:
        raise SamplingError("the tree is over the sampler's budget already")
    for _ in range(tries):
        new, _ = sampler.sample_from(st.node.head, st.inputs, st.uparams, rng, budget=budget,
                                     depth=st.depth, mult=st.mult, avoid=st.node)
        child = replace_at(tree, path, new)
        if is_valid(child, sampler.table, shape, sampler.budget):
            return child
    raise SamplingError(f"no valid replacement for the node at {path} in {tries} tries")


def crossover(a: Expansion, b: Expansion, table: RuleTable, input_shape: tuple[int, ...],
              rng: random.Random, budget: Budget = DEFAULT_BUDGET) -> Expansion | None:
    """``a`` with one subtree replaced by a compatible subtree of ``b``; None if there is none."""
    sa, sb = node_states(a, table, input_shape), node_states(b, table, input_shape)
    index: dict = {}
    for s in sb:
        index.setdefault((s.node.head, s.inputs, s.uparams, s.outputs), []).append(s)
    pairs = [(x, y) for x in sa for y in index.get((x.node.head, x.inputs, x.uparams, x.outputs), ())
             if x.node != y.node]
    rng.shuffle(pairs)
    for x, y in pairs:
        child = replace_at(a, x.path, y.node)
        if within(child, infer(child, table.library, input_shape), budget):
            return child
    return None


def _size(tree: Node) -> int:
    c = counts(tree)
    return c.nonterminals + c.terminals
