"""The compiled form of a .ein file: an immutable, typed rule table.

Semantics (the spec of the .ein language; grammar/README.md has the user's version):

* A derivation threads a *state* left to right through a rule body: the features (their
  shapes and modes; more than one between a branching op and its aggregation) and the finite
  parameters read by guards: ``m`` (mode of the features: Im or Col), ``b`` (number of
  features, the branching factor) and any ``param`` the file declares.
* ``m`` and ``b`` change only through operations (``im2col`` sets Col, ``clone(b=4)`` sets
  b=4, an aggregation sets b=1). Declared parameters are inherited: ``X[level=2]`` derives X
  and its subtree with level=2; the parent's value holds again after X.
* A rule ``X(guards) -> alt | alt`` applies to X in every state its guards accept; at most
  one rule of X may accept any state. Each alternative has a probability; op variant sets
  (``linear(d in {16, 32})``) expand to one alternative per variant.
* A branch block ``{arm | arm}`` follows a branching op: the first arm whose guards accept
  the state and whose shape fits b is used. ``M, M`` derives one subtree per branch (exactly b
  names); ``M*`` derives one subtree and repeats it on all b branches, with separate weights.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from .errors import Span
from .ops import Args, Library, Value

Env = Mapping[str, Value | None]
"""Finite parameter values of a state: m, b and declared parameters."""


@dataclass(frozen=True, slots=True)
class Guard:
    """``param`` must take one of ``values``."""

    param: str
    values: frozenset[Value]
    span: Span | None = field(default=None, compare=False)

    def holds(self, env: Env) -> bool:
        return env.get(self.param) in self.values


def guards_hold(guards: tuple[Guard, ...], env: Env) -> bool:
    return all(g.holds(env) for g in guards)


def merge_params(params: tuple[tuple[str, Value], ...], sets: tuple[tuple[str, Value], ...]) -> tuple:
    """Inherited declared parameters, with a reference's ``[p=v]`` settings applied (sorted)."""
    if not sets:
        return params
    d = dict(params)
    d.update(sets)
    return tuple(sorted(d.items()))


@dataclass(frozen=True, slots=True)
class Ref:
    """A nonterminal in a body, with inherited parameters it sets for its subtree."""

    name: str
    sets: tuple[tuple[str, Value], ...] = ()
    span: Span | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class OpCall:
    """One operation with all hyperparameters fixed (one variant)."""

    op: str
    args: Args = ()
    span: Span | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Arm:
    guards: tuple[Guard, ...]
    items: tuple[Ref, ...]
    repeated: bool
    span: Span | None = field(default=None, compare=False)

    def fits(self, env: Env) -> bool:
        b = env.get("b")
        return guards_hold(self.guards, env) and isinstance(b, int) and (self.repeated or len(self.items) == b)


@dataclass(frozen=True, slots=True)
class Branches:
    arms: tuple[Arm, ...]
    span: Span | None = field(default=None, compare=False)

    def arm_for(self, env: Env) -> Arm | None:
        return next((a for a in self.arms if a.fits(env)), None)


Element = Ref | OpCall | Branches


@dataclass(frozen=True, slots=True)
class Alternative:
    head: str
    label: str | None
    body: tuple[Element, ...]
    prob: float
    span: Span | None = field(default=None, compare=False)

    @property
    def refs(self) -> tuple[Ref, ...]:
        """Every nonterminal occurrence, branch arms included."""
        out: list[Ref] = []
        for e in self.body:
            if isinstance(e, Ref):
                out.append(e)
            elif isinstance(e, Branches):
                out.extend(r for arm in e.arms for r in arm.items)
        return tuple(out)

    @property
    def ops(self) -> tuple[OpCall, ...]:
        return tuple(e for e in self.body if isinstance(e, OpCall))


@dataclass(frozen=True, slots=True)
class Rule:
    """All alternatives of one nonterminal under one guard."""

    head: str
    guards: tuple[Guard, ...]
    alternatives: tuple[Alternative, ...]
    span: Span | None = field(default=None, compare=False)

    def matches(self, env: Env) -> bool:
        return guards_hold(self.guards, env)


@dataclass(frozen=True, slots=True)
class Start:
    symbol: str
    shape: tuple[int, ...] | None  # default input shape (the CLI's --input overrides it)
    mode: str | None
    params: tuple[tuple[str, Value], ...]  # initial values of declared parameters
    span: Span | None = field(default=None, compare=False)


@dataclass(frozen=True, eq=False)
class RuleTable:
    """A compiled grammar. ``rules[X]`` lists X's guarded rules in file order.

    Compared and hashed by identity: ``compile_ein`` memoises, so one text gives one table.
    """

    path: str
    start: Start
    params: Mapping[str, frozenset[Value]]  # declared parameters and their values
    rules: Mapping[str, tuple[Rule, ...]]
    library: Library
    source: str = field(default="", compare=False, repr=False)  # every file's text, for hashes
    cache: dict = field(default_factory=dict, compare=False, repr=False)  # derived lookups, by users

    def __post_init__(self) -> None:
        object.__setattr__(self, "rules", MappingProxyType(dict(self.rules)))
        object.__setattr__(self, "params", MappingProxyType(dict(self.params)))

    def rule_for(self, head: str, env: Env) -> Rule | None:
        """The rule of ``head`` that applies in ``env`` (checks guarantee at most one)."""
        for rule in self.rules.get(head, ()):
            if rule.matches(env):
                return rule
        return None

    @property
    def nonterminals(self) -> tuple[str, ...]:
        return tuple(self.rules)

    def start_env(self, mode: str) -> dict[str, Value | None]:
        return {"m": mode, "b": 1, **dict(self.start.params)}
