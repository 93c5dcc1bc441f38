"""Sampling derivations that are valid by construction, within resource budgets.

The sampler is a small machine whose whole state is immutable (a linked stack of frames,
the current features and the costs so far), so a choice point is just the state before the
choice plus the alternatives not yet tried: backtracking restores a reference, copies
nothing, and the loop is iterative whatever the depth. Alternatives are drawn from the
grammar's probabilities restricted to those whose guards hold and whose leading operation
accepts the current features (renormalised); an operation later in a body that refuses its
input, or a budget overrun, backtracks to the latest choice. Backtracks are bounded per
attempt, attempts are bounded per sample, then ``SamplingError``: never a hang.

An operation applies only where its shape rule accepts the real features *and* its finite
effect (``Op.finite_effect``: all the parser and the grammar's analysis know) agrees, so
every sampled string parses back (einc.derivation) by construction.

Only static shape rules are used: no tensor, no module.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from .errors import EinError
from .notation import MAX_NESTING
from .ops import Args, Features, NotApplicable, Op, feature_for, mode_of
from .table import OpCall, Ref, RuleTable, merge_params
from .tree import Expansion, Fork, Leaf, Node

Chooser = Callable[[Sequence[float]], int]
"""Picks an index given the weights of the candidates (random, or Hypothesis-driven)."""


class SamplingError(EinError):
    """No valid derivation was found within the retry budget."""


MAX_DEPTH = (MAX_NESTING - 2) // 2
"""The deepest derivation a budget may allow: its string nests at most 2 * depth + 2 levels."""


@dataclass(frozen=True)
class Budget:
    """Resource limits every sample keeps, known before any module exists.

    Per-sample counts (batch excluded). The defaults admit the paper's four seeds at
    (3, 64, 64) (largest: ResNet18 11.2M params, Mixer 5.4 GFLOPs, WRN-16-4 26M activation
    elements counting every op's output, im2col copies included) and bound a sample to
    128 MB of activations per input: a batch of 32 stays within 4 GiB, on a CPU or a GPU.
    """

    max_params: int = 25_000_000
    max_flops: int = 10_000_000_000
    max_activations: int = 32_000_000
    max_nodes: int = 2_000
    max_depth: int = 200

    def __post_init__(self) -> None:
        if not isinstance(self.max_depth, int) or not 1 <= self.max_depth <= MAX_DEPTH:
            raise EinError(f"max_depth is 1 to {MAX_DEPTH:,}, not {self.max_depth}: einc.notation parses strings "
                           f"nested at most {MAX_NESTING:,} deep")

    def scaled_left(self, used: Cost4) -> Budget:
        return replace(self, max_params=self.max_params - used[0], max_flops=self.max_flops - used[1],
                       max_activations=self.max_activations - used[2], max_nodes=self.max_nodes - used[3])


Cost4 = tuple[int, int, int, int]  # params, flops, activations, nodes


# Frames are tuples (cheap, immutable):
#   ("E", head, label, body, i, kids, uparams, depth, mult)   expanding a nonterminal
#   ("F", arm, inputs, i, outs, kids, uparams, depth, mult)   deriving a branch block
# kids/outs are cons lists: (item, rest) or None.


def _cons_list(c) -> tuple:
    out = []
    while c is not None:
        out.append(c[0])
        c = c[1]
    return tuple(reversed(out))


class Sampler:
    """Draws derivations of ``table`` for inputs of ``input_shape``."""

    def __init__(self, table: RuleTable, input_shape: tuple[int, ...], budget: Budget = Budget(),
                 max_backtracks: int = 200, max_attempts: int = 100, small_first: bool = False):
        """``small_first`` offers the chooser the alternatives with fewest nonterminals first
        (Hypothesis shrinks choices towards index 0, so trees shrink towards small ones)."""
        self.table = table
        self.small_first = small_first
        from .checks import check_input

        self.input = (feature_for(check_input(table, input_shape)),)  # a wrong mode is named here
        self.budget = budget
        self.max_backtracks = max_backtracks
        self.max_attempts = max_attempts

    # -- public

    def sample(self, rng: random.Random | Chooser) -> Expansion:
        tree, _ = self.sample_from(self.table.start.symbol, self.input, self.table.start.params, rng)
        return tree

    def sample_from(self, head: str, features: Features, uparams: tuple, rng: random.Random | Chooser,
                    budget: Budget | None = None, depth: int = 0, mult: int = 1,
                    avoid: Node | None = None) -> tuple[Expansion, Features]:
        """A subtree for ``head`` in the given state; ``avoid`` rejects one particular result.

        ``depth`` is the nesting depth of the subtree's root and ``mult`` how many copies of it
        the network holds (inside repeated branches), both counted against the budget.
        """
        choose = _weighted(rng) if isinstance(rng, random.Random) else rng
        budget = budget or self.budget
        for _ in range(self.max_attempts):
            result = self._attempt(head, features, uparams, choose, budget, depth, mult)
            if result is not None and result[0] != avoid:
                return result
        raise SamplingError(f'no valid derivation of "{head}" from {", ".join(map(str, features))} '
                            f"within {self.max_attempts} attempts of {self.max_backtracks} backtracks; "
                            "raise the budgets or the retry limits")

    # -- the machine

    def _attempt(self, head, features, uparams, choose, budget: Budget, depth0: int, mult0: int):
        lib = self.table.library
        root = ("E", "<root>", None, (Ref(head),), 0, None, uparams, depth0 - 1, mult0)
        state: tuple[Any, Features, Cost4] = ((root, None), features, (0, 0, 0, 0))  # (stack, features, used)
        choices: list = []  # (state before, head, candidates [(alt, weight)], frame info)
        backtracks = 0

        while True:
            stack, feats, used = state
            frame: tuple[Any, ...] = stack[0]  # an "E" or "F" frame (tagged tuples, above)
            failed = False
            if frame[0] == "E":
                _, fhead, label, body, i, kids, up, depth, mult = frame
                if i == len(body):  # expansion finished
                    node = Expansion(fhead, label, _cons_list(kids))
                    parent_stack = stack[1]
                    if parent_stack is None:
                        return node.children[0], feats
                    state = (self._deliver(parent_stack, node, feats), feats, used) if parent_stack[0][0] == "E" \
                        else self._deliver_fork(parent_stack, node, feats, used)
                    if state is None:
                        failed = True
                else:
                    el = body[i]
                    if isinstance(el, OpCall):
                        op = lib[el.op]
                        try:
                            out = _apply(op, feats, el.args)
                        except NotApplicable:
                            failed = True
                        else:
                            cost = op.cost(feats, **dict(el.args))
                            used = (used[0] + cost.params * mult, used[1] + cost.flops * mult,
                                    used[2] + sum(f.numel for f in out) * mult, used[3] + 1)
                            if self._over(used, budget):
                                failed = True
                            else:
                                leaf = Leaf(el.op, el.args)
                                state = (((("E", fhead, label, body, i + 1, (leaf, kids), up, depth, mult)), stack[1]),
                                         out, used)
                    elif isinstance(el, Ref):
                        child_up = merge_params(up, el.sets)
                        state, ok = self._expand(el.name, state, child_up, depth + 1, mult, choose, choices, budget)
                        failed = not ok
                    else:
                        arm = el.arm_for(_env(feats, up))
                        if arm is None or mode_of(feats) is None:
                            failed = True
                        else:
                            fr = ("F", arm, feats, 0, None, None, up, depth, mult)
                            next_frame = ("E", fhead, label, body, i, kids, up, depth, mult)
                            state = ((fr, (next_frame, stack[1])), feats, used)
            else:  # fork frame: derive the next branch
                _, arm, inputs, i, outs, kids, up, depth, mult = frame
                if arm.repeated:
                    ref, feat_in, child_mult = arm.items[0], inputs[0], mult * len(inputs)
                else:
                    ref, feat_in, child_mult = arm.items[i], inputs[i], mult
                state = (stack, (feat_in,), used)
                state, ok = self._expand(ref.name, state, merge_params(up, ref.sets), depth + 1, child_mult,
                                         choose, choices, budget)
                failed = not ok

            if failed:
                while True:
                    if not choices or backtracks >= self.max_backtracks:
                        return None
                    backtracks += 1
                    before, chead, cands, cdepth, cmult, cup = choices.pop()
                    if cands:
                        state = self._choose(chead, before, cands, cdepth, cmult, choose, choices, cup)
                        break

    def _expand(self, head, state, uparams, depth, mult, choose, choices, budget):
        stack, feats, used = state
        if depth >= budget.max_depth or used[3] + 1 > budget.max_nodes:
            return state, False
        rule = self.table.rule_for(head, _env(feats, uparams))
        if rule is None:
            return state, False
        lib = self.table.library
        cands = []
        for alt in rule.alternatives:
            if alt.prob <= 0:
                continue
            first = alt.body[0]
            if isinstance(first, OpCall):  # look ahead: the leading op must accept the features
                try:
                    _apply(lib[first.op], feats, first.args)
                except NotApplicable:
                    continue
            cands.append((alt, alt.prob))
        if not cands:
            return state, False
        if self.small_first:
            cands.sort(key=lambda c: len(c[0].refs))
        base = (stack, feats, (used[0], used[1], used[2], used[3] + 1))
        return self._choose(head, base, cands, depth, mult, choose, choices, uparams), True

    def _choose(self, head, base, cands, depth, mult, choose, choices, up):
        idx = choose([w for _, w in cands])
        alt = cands[idx][0]
        rest = cands[:idx] + cands[idx + 1:]
        choices.append((base, head, rest, depth, mult, up))
        stack, feats, used = base
        frame = ("E", head, alt.label, alt.body, 0, None, up, depth, mult)
        return ((frame, stack), feats, used)

    def _deliver(self, parent_stack, node, feats):
        _, fhead, label, body, i, kids, up, depth, mult = parent_stack[0]
        return (("E", fhead, label, body, i + 1, (node, kids), up, depth, mult), parent_stack[1])

    def _deliver_fork(self, parent_stack, node, feats, used):
        """A branch's subtree is done: record it, then finish the fork or start the next branch."""
        _, arm, inputs, i, outs, kids, up, depth, mult = parent_stack[0]
        if len(feats) != 1:
            return None  # a branch must end in one feature
        b = len(inputs)
        if arm.repeated:
            if any(f != inputs[0] for f in inputs):
                return None  # a repeated subtree needs equal inputs (every built-in brancher gives them)
            fork = Fork((node,), True, b)
            out_feats = feats * b
        else:
            outs, kids = (feats[0], outs), (node, kids)
            if i + 1 < b:
                fr = ("F", arm, inputs, i + 1, outs, kids, up, depth, mult)
                return ((fr, parent_stack[1]), inputs[i + 1:i + 2], used)
            fork = Fork(_cons_list(kids), False, b)
            out_feats = _cons_list(outs)
        gp = parent_stack[1]  # the expansion frame holding the branch block
        _, fhead, label, body, j, gkids, gup, gdepth, gmult = gp[0]
        return ((("E", fhead, label, body, j + 1, (fork, gkids), gup, gdepth, gmult), gp[1]), out_feats, used)

    @staticmethod
    def _over(used: Cost4, b: Budget) -> bool:
        return used[0] > b.max_params or used[1] > b.max_flops or used[2] > b.max_activations or used[3] > b.max_nodes


def _apply(op: Op, feats: Features, args: Args) -> Features:
    """The op's shape rule on the real features, refused too where its finite effect refuses
    or disagrees: the parser (einc.derivation) and the analysis know only the finite effect, so a
    sampled string always parses back."""
    out = op.apply(feats, args)
    if op.finite_effect(mode_of(feats), len(feats), args) != (mode_of(out), len(out)):
        raise NotApplicable(f'"{op.name}": its finite effect disagrees with its shape rule here')
    return out


def _env(feats: Features, uparams: tuple) -> dict:
    return {"m": mode_of(feats), "b": len(feats), **dict(uparams)}


def _weighted(rng: random.Random) -> Chooser:
    def choose(weights: Sequence[float]) -> int:
        total = sum(weights)
        x = rng.random() * total
        for i, w in enumerate(weights):
            x -= w
            if x < 0:
                return i
        return len(weights) - 1

    return choose


def with_stop_probability(table: RuleTable, p: float) -> RuleTable:
    """A copy of ``table`` whose recursive nonterminals end with total probability ``p``.

    For einspace this is p(M -> C); the other alternatives keep their relative weights.
    """
    from .pcfg import is_recursive, stop_line

    if not 0 < p <= 1:
        raise EinError(f"a stop probability is in (0, 1], not {p}")
    rules = {}
    for head, rs in table.rules.items():
        if not is_recursive(table, head):
            rules[head] = rs
            continue
        line = stop_line(table, head)
        rules[head] = tuple(replace(r, alternatives=tuple(replace(a, prob=line[id(a)][0] + p * line[id(a)][1])
                                                          for a in r.alternatives)) for r in rs)
    return RuleTable(table.path, table.start, table.params, rules, table.library, table.source + f"\n#p={p}")
