"""The grammar as a branching process over (nonterminal x finite parameter state).

Shapes are infinite, so this analysis abstracts a state to its finite part: the mode ``m``
(or None when branches disagree), the branching factor ``b`` and the declared parameters.
Operations act on that abstraction through their own finite effect (``Op.finite_effect``: the
op's ``effect`` hook, or its shape rule applied to stand-in features), so no operation's
behaviour is written twice; the parser and the sampler use the same effect.

From the abstraction come reachability (which nonterminal meets which state), the
expectation matrix E (expected children of each kind per expansion, paper A.4), its spectral
radius, expected sizes via (I - E)^-1, and the critical probability of each recursive
nonterminal's terminating alternatives. Probabilities are the grammar's own, before any
shape-based filtering a sampler applies.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .table import Alternative, Branches, OpCall, Ref, Rule, RuleTable, merge_params

Key = tuple  # (nonterminal, m, b, params)
Out = dict  # (m, b) -> probability mass


def env_of(key: Key) -> dict:
    _, m, b, params = key
    return {"m": m, "b": b, **dict(params)}


def show_state(key: Key) -> str:
    _, m, b, params = key
    parts = [f"m={m if m else 'mixed'}", f"b={b}"] + [f"{k}={v}" for k, v in params]
    return ", ".join(parts)


def finite_effect(table: RuleTable, call: OpCall, m: str | None, b: int) -> tuple[str | None, int] | None:
    """(mode, branching factor) after ``call`` in a state with (m, b), or None if it refuses."""
    op = table.library.get(call.op)
    return None if op is None else op.finite_effect(m, b, call.args)


@dataclass
class _Trace:
    """Children met while running one body: key -> (derivation count, network count)."""

    children: dict = field(default_factory=dict)
    first_ref: dict = field(default_factory=dict)

    def add(self, key: Key, mass: float, copies: int, ref: Ref) -> None:
        d, n = self.children.get(key, (0.0, 0.0))
        self.children[key] = (d + mass, n + mass * copies)
        self.first_ref.setdefault(key, ref)


def _run_body(table: RuleTable, alt: Alternative, key: Key, out: dict[Key, Out],
              normalise: bool, trace: _Trace) -> Out:
    """Thread a distribution over (m, b) through ``alt``'s body; returns the output distribution."""
    params = key[3]
    dist: Out = {(key[1], key[2]): 1.0}
    for el in alt.body:
        new: Out = {}
        for (m, b), mass in dist.items():
            if mass <= 0:
                continue
            if isinstance(el, OpCall):
                eff = finite_effect(table, el, m, b)
                if eff is not None:
                    new[eff] = new.get(eff, 0.0) + mass
            elif isinstance(el, Ref):
                child = (el.name, m, b, merge_params(params, el.sets))
                trace.add(child, mass, 1, el)
                for mb, p in _child_out(out, child, normalise).items():
                    new[mb] = new.get(mb, 0.0) + mass * p
            else:
                _run_branches(el, m, b, params, mass, out, normalise, trace, new)
        dist = new
    return dist


def _run_branches(el: Branches, m, b, params, mass, out, normalise, trace: _Trace, new: Out) -> None:
    arm = el.arm_for({"m": m, "b": b, **dict(params)})
    if arm is None or m is None:
        return
    if arm.repeated:
        child = (arm.items[0].name, m, 1, params)
        trace.add(child, mass, b, arm.items[0])
        for (m2, b2), p in _child_out(out, child, normalise).items():
            if b2 == 1:
                new[(m2, b)] = new.get((m2, b), 0.0) + mass * p
        return
    joint: dict = {(): 1.0}  # tuple of branch output modes -> mass
    for ref in arm.items:
        child = (ref.name, m, 1, merge_params(params, ref.sets))
        trace.add(child, mass, 1, ref)
        step: dict = {}
        for modes, p in joint.items():
            for (m2, b2), q in _child_out(out, child, normalise).items():
                if b2 == 1:
                    step[modes + (m2,)] = step.get(modes + (m2,), 0.0) + p * q
        joint = step
    for modes, p in joint.items():
        mb = (modes[0] if len(set(modes)) == 1 else None, b)
        new[mb] = new.get(mb, 0.0) + mass * p



def _child_out(out: dict[Key, Out], key: Key, normalise: bool) -> Out:
    dist = out.get(key, {})
    if not normalise:
        return dist
    total = sum(dist.values())
    return {k: v / total for k, v in dist.items()} if total > 0 else {}


@dataclass
class Solution:
    keys: list[Key]  # every (nonterminal, state) met, start first
    out: dict[Key, Out]  # output distribution (mass = termination probability)
    first_ref: dict[Key, Ref]  # the body occurrence that first led to each key
    converged: bool


def solve(table: RuleTable, mode: str, weight: Callable[[Alternative], float], max_iter: int = 400,
          tol: float = 1e-12) -> Solution:
    """Kleene iteration of the output distributions from zero (the least fixpoint).

    Gauss-Seidel order: each key's update is seen by the keys after it in the same sweep. The
    system is monotone, so this still rises to the least fixpoint, in about half the sweeps.
    """
    start: Key = (table.start.symbol, mode, 1, table.start.params)
    keys: list[Key] = [start]
    out: dict[Key, Out] = {start: {}}
    first_ref: dict[Key, Ref] = {}
    rules: dict[Key, Rule | None] = {}
    converged = False
    for _ in range(max_iter):
        change, known = 0.0, len(keys)
        i = 0
        while i < len(keys):  # keys met in this sweep are swept in it too
            key = keys[i]
            i += 1
            if key not in rules:
                rules[key] = table.rule_for(key[0], env_of(key))
            rule = rules[key]
            acc: Out = {}
            if rule is not None:
                for alt in rule.alternatives:
                    w = weight(alt)
                    if w <= 0:
                        continue
                    trace = _Trace()
                    for mb, p in _run_body(table, alt, key, out, False, trace).items():
                        acc[mb] = acc.get(mb, 0.0) + w * p
                    for child, ref in trace.first_ref.items():
                        if child not in out:
                            keys.append(child)
                            out[child] = {}
                            first_ref[child] = ref
            if weight is _possible:
                acc = {k: 1.0 for k, v in acc.items() if v > 0}  # booleans: can it finish so?
            old = out[key]
            change = max([change] + [abs(acc.get(k, 0.0) - old.get(k, 0.0)) for k in set(acc) | set(old)])
            out[key] = acc
        if len(keys) == known and change <= tol:
            converged = True
            break
    return Solution(keys, out, first_ref, converged)


def _possible(alt: Alternative) -> float:
    return 1.0


def _probability(alt: Alternative) -> float:
    return alt.prob


def reachability(table: RuleTable, mode: str) -> Solution:
    """Which (nonterminal, state) pairs can occur, and which can finish (positive mass).

    Kept in ``table.cache``: three checks ask for each mode's.
    """
    key = ("reachability", mode)
    if key not in table.cache:
        table.cache[key] = solve(table, mode, _possible, max_iter=10_000, tol=0.0)
    return table.cache[key]


@dataclass(frozen=True)
class Report:
    """What ``einc check`` prints about a consistent (or not) grammar."""

    rho: float
    rho_network: float
    expansions: dict[str, float]  # expected expansions of each nonterminal per derivation
    expected_nonterminals: float
    expected_terminals: float
    network_terminals: float  # inf when the expected network size diverges
    critical: dict[str, tuple[float, float, float]]  # nonterminal -> (consistency, network, now)
    start_mode: str


def radius(table: RuleTable, mode: str) -> float:
    """The spectral radius alone: ``analyse(table, mode).rho`` without sizes or critical probabilities."""
    _, parts = _expectations(table, mode)
    return _radius(parts.matrices(parts.probs)[0])


def _expectations(table: RuleTable, mode: str) -> tuple[list[Key], _Parts]:
    sol = solve(table, mode, _probability)
    keys = [k for k in sol.keys if table.rule_for(k[0], env_of(k)) is not None]
    return keys, _Parts(table, sol, keys)


def analyse(table: RuleTable, mode: str) -> Report:
    keys, parts = _expectations(table, mode)
    e, enet, local = parts.matrices(parts.probs)
    rho, rho_net = _radius(e), _radius(enet)
    expansions: dict[str, float] = {}
    exp_nt = exp_t = net_t = float("inf")
    row = _expected_counts(e) if rho < 1 else None  # N[start, :]
    if row is not None:
        for k, v in zip(keys, row, strict=True):
            expansions[k[0]] = expansions.get(k[0], 0.0) + float(v)
        exp_nt, exp_t = float(row.sum()), float(row @ local)
    else:
        expansions = {k[0]: float("inf") for k in keys}
    row = _expected_counts(enet) if rho_net < 1 else None
    if row is not None:
        net_t = float(row @ local)

    critical = {}
    for head in _recursive(table, keys, e):
        term = terminating(table, head)
        now = sum(a.prob for a in table.rules[head][0].alternatives if id(a) in term)
        critical[head] = (_critical(parts, head, table, 0), _critical(parts, head, table, 1), now)
    return Report(rho, rho_net, expansions, exp_nt, exp_t, net_t, critical, mode)


class _Parts:
    """Per (key, alternative): derivation and network child-count rows and op count, stacked so
    that the expectation matrices for any alternative probabilities are two matrix products
    (the critical-probability bisections build them a hundred times per grammar)."""

    def __init__(self, table: RuleTable, sol: Solution, keys: list[Key]):
        n = len(keys)
        index = {k: i for i, k in enumerate(keys)}
        rows, derivations, networks, ops, alts = [], [], [], [], []
        for key in keys:
            rule = table.rule_for(key[0], env_of(key))
            assert rule is not None  # keys are those with a rule
            for alt in rule.alternatives:
                trace = _Trace()
                _run_body(table, alt, key, sol.out, True, trace)
                d, net = np.zeros(n), np.zeros(n)
                for child, (cd, cn) in trace.children.items():
                    if child in index:
                        d[index[child]] += cd
                        net[index[child]] += cn
                rows.append(index[key])
                derivations.append(d)
                networks.append(net)
                ops.append(len(alt.ops))
                alts.append(alt)
        self.alts = alts  # an alternative has a part in each state its rule applies in
        self.owner = np.zeros((n, len(alts)))  # key x part: 1 where the part is the key's
        self.owner[rows, np.arange(len(alts))] = 1.0
        shape = (len(alts), n)
        self.derivations = np.array(derivations).reshape(shape)
        self.networks = np.array(networks).reshape(shape)
        self.ops = np.array(ops, dtype=float)
        self.probs = np.array([a.prob for a in alts])

    def matrices(self, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """E (expected derivation children), E for networks (repeats counted), expected ops per key."""
        weighted = self.owner * probs
        return weighted @ self.derivations, weighted @ self.networks, weighted @ self.ops


RADIUS_TOLERANCE = 1e-9


def _radius(m: np.ndarray) -> float:
    """Spectral radius; within rounding of 1 it is 1 (eigvals can give 1 - 1e-16 for a critical E)."""
    r = float(max(abs(np.linalg.eigvals(m)))) if m.size else 0.0
    return 1.0 if abs(r - 1.0) < RADIUS_TOLERANCE else r


def _expected_counts(m: np.ndarray) -> np.ndarray | None:
    """Row ``start`` of (I - m)^-1, or None when it does not exist numerically (then sizes are infinite)."""
    try:
        row = np.linalg.solve(np.eye(len(m)) - m.T, _unit(len(m), 0))
    except np.linalg.LinAlgError:
        return None
    return row if np.all(np.isfinite(row)) and row.min() >= -RADIUS_TOLERANCE else None


def _unit(n: int, i: int) -> np.ndarray:
    v = np.zeros(n)
    v[i] = 1.0
    return v


def _recursive(table: RuleTable, keys, e: np.ndarray) -> list[str]:
    """Nonterminals that can (with positive probability) expand to themselves."""
    n = len(keys)
    reach = (e > 0).astype(float)
    closure = reach.copy()
    for _ in range(n):
        closure = np.minimum(1.0, closure + closure @ reach)
    heads = []
    for i, k in enumerate(keys):
        if closure[i, i] > 0 and k[0] not in heads:
            heads.append(k[0])
    return heads


def terminating(table: RuleTable, head: str) -> set[int]:
    """Alternatives of ``head`` with no nonterminal that can lead back to ``head``."""
    back = leads_to(table, head)
    return {id(a) for r in table.rules[head] for a in r.alternatives
            if not any(ref.name in back for ref in a.refs)}


def is_recursive(table: RuleTable, head: str) -> bool:
    """Does some alternative of ``head`` lead back to ``head``?"""
    back = leads_to(table, head)
    return any(ref.name in back for r in table.rules[head] for a in r.alternatives for ref in a.refs)


def leads_to(table: RuleTable, head: str) -> set[str]:
    """Nonterminals from which ``head`` can be derived (ignoring states)."""
    users: dict[str, set[str]] = {}
    for h, rules in table.rules.items():
        for r in rules:
            for a in r.alternatives:
                for ref in a.refs:
                    users.setdefault(ref.name, set()).add(h)
    seen, todo = {head}, [head]
    while todo:
        for u in users.get(todo.pop(), ()):
            if u not in seen:
                seen.add(u)
                todo.append(u)
    return seen


def stop_line(table: RuleTable, head: str) -> dict[int, tuple[float, float]]:
    """Each alternative of ``head`` (by id) -> (base, slope): its probability when ``head``'s
    terminating alternatives take total ``q`` is ``base + q * slope``.

    The terminating alternatives share ``q`` and the others ``1 - q``, each in proportion to its
    own probability. A rule with no alternative of one kind keeps its probabilities (it has no
    choice to shift). The sampler's stop probability and the critical probability both use it.
    """
    term = terminating(table, head)
    line: dict[int, tuple[float, float]] = {}
    for r in table.rules[head]:
        t = sum(a.prob for a in r.alternatives if id(a) in term)
        o = sum(a.prob for a in r.alternatives if id(a) not in term)
        for a in r.alternatives:
            if t <= 0 or o <= 0:
                line[id(a)] = (a.prob, 0.0)
            elif id(a) in term:
                line[id(a)] = (0.0, a.prob / t)
            else:
                line[id(a)] = (a.prob / o, -a.prob / o)
    return line


def _critical(parts: _Parts, head: str, table: RuleTable, which: int) -> float:
    """Smallest total probability of ``head``'s terminating alternatives keeping the radius of
    matrix ``which`` (0: derivations, 1: networks) below 1.

    The other alternatives of each rule keep their relative weights; mode distributions are
    held at the grammar's own (exact whenever, as in einspace, they don't depend on it).
    """
    term = terminating(table, head)
    if not term:
        return float("nan")
    line = stop_line(table, head)
    base, slope = parts.probs.copy(), np.zeros_like(parts.probs)
    for j, a in enumerate(parts.alts):
        if id(a) in line:
            base[j], slope[j] = line[id(a)]

    def radius(q: float) -> float:
        return _radius(parts.matrices(base + q * slope)[which])

    if radius(0.0) < 1:
        return 0.0
    if radius(1.0) >= 1:
        return float("nan")
    lo, hi = 0.0, 1.0
    for _ in range(50):
        mid = (lo + hi) / 2
        if radius(mid) < 1:
            hi = mid
        else:
            lo = mid
    return hi
