"""What an operation is: its hyperparameters, its shape rule, its cost and its torch lowering.

An operation never imports torch at module level; its ``lower`` hook does, when called.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import EinError
from .state import Feature, Features, mode_of, representative

GROUPS = ("branching", "aggregation", "routing", "computation")
"""An op's group fixes its arity: branching 1 -> b, aggregation b -> 1, the others 1 -> 1."""
_NAME = re.compile(r"[a-z][a-z0-9_]*(?:-[a-z0-9_]+)*\Z")  # an op name as .ein and bracket notation write it
Value = int | bool | str | tuple[int, ...]
Args = tuple[tuple[str, Value], ...]
"""Hyperparameters as sorted (name, value) pairs: hashable, canonical."""


class OpError(EinError):
    """An ``Op`` built wrong (a misspelt group, a bad name, a hook that is not callable)."""


class NotApplicable(Exception):
    """A shape rule refuses its input; the message says which rule, e.g. 'add of unequal shapes'."""


@dataclass(frozen=True, slots=True)
class Param:
    """A hyperparameter: its name, a description of its domain, and the domain test."""

    name: str
    domain: str
    accepts: Callable[[Any], bool]


@dataclass(frozen=True, slots=True)
class Cost:
    params: int = 0
    flops: int = 0  # multiply-adds count 2


_ORDER: dict[str, dict[str, int]] = {}  # op name -> its hyperparameters' declared order (first Op of the name)


def param_order(name: str) -> dict[str, int]:
    """Position of each hyperparameter of the op called ``name`` as the op declares them, the
    order bracket notation writes them in ({} for a name no Op has had)."""
    return _ORDER.get(name, {})


Effect = tuple[str | None, int]
"""The finite state after an op: (mode, branching factor); mode None when branches disagree."""


@dataclass(frozen=True, slots=True)
class Op:
    """One operation of the library (paper A.2); grammar/README.md, "Writing an operation".

    ``infer(features, **args)`` returns the output features or raises ``NotApplicable``;
    ``cost(features, **args)`` gives parameters and FLOPs per sample for that input;
    ``lower(ctx, nodes, features, **args)`` adds the op to a torch.fx graph (see einc.lower);
    ``hint`` names its modules and parameters (``{hint}_{n}``; default: the name, ``-`` as
    ``_``), in the built model and in ``einc compile --summary`` alike; ``effect(mode, b, **args)``
    is its finite effect: the (mode, b) after it, or None where it never applies (default:
    ``infer`` run on stand-in features of that mode and count, see ``Op.finite_effect``).
    Arity follows from the group: branching 1->b, aggregation b->1, the others 1->1.
    An Op checks itself when made and raises ``OpError`` naming what is wrong.
    """

    name: str
    group: str
    params: tuple[Param, ...]
    infer: Callable[..., Features]
    cost: Callable[..., Cost] = field(default=lambda features, **args: Cost())
    lower: Callable[..., Any] | None = None
    doc: str = ""
    hint: str = ""
    effect: Callable[..., Effect | None] | None = None
    _effects: dict = field(default_factory=dict, init=False, repr=False, compare=False)  # finite-effect cache

    def __post_init__(self) -> None:
        def bad(problem: str) -> OpError:
            return OpError(f'operation "{self.name}": {problem}')

        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise OpError(f"operation name {self.name!r} is not lowercase letters, digits, _ and inner dashes "
                          "(as a .ein file writes it, e.g. \"pool3\" or \"group-dim\")")
        if self.group not in GROUPS:
            raise bad(f'group "{self.group}" is not one of {", ".join(GROUPS)}')
        if isinstance(self.params, list):
            object.__setattr__(self, "params", tuple(self.params))
        if not isinstance(self.params, tuple) or not all(isinstance(p, Param) for p in self.params):
            raise bad("params is a tuple of einc.ops.Param")
        names = [p.name for p in self.params]
        if len(set(names)) != len(names):
            raise bad("a hyperparameter is declared twice")
        for p in self.params:
            if not _NAME.match(p.name) or "-" in p.name:
                raise bad(f"hyperparameter name {p.name!r} is not lowercase letters, digits and _")
        for hook in ("infer", "cost"):
            if not callable(getattr(self, hook)):
                raise bad(f"{hook} is not callable")
        for hook in ("lower", "effect"):
            if getattr(self, hook) is not None and not callable(getattr(self, hook)):
                raise bad(f"{hook} is not callable (or None)")
        if not self.hint:
            object.__setattr__(self, "hint", self.name.replace("-", "_"))
        elif not (isinstance(self.hint, str) and self.hint.isidentifier() and self.hint.islower()):
            raise bad(f"hint {self.hint!r} is not a lowercase Python identifier")
        _ORDER.setdefault(self.name, {n: i for i, n in enumerate(names)})  # only an Op that was made

    def __hash__(self) -> int:
        return hash((self.name, self.group, self.params))

    def check_args(self, args: dict[str, Any]) -> list[str]:
        """Reasons the hyperparameters are wrong (unknown, missing, out of domain); [] if fine."""
        problems = []
        names = {p.name for p in self.params}
        for name in args:
            if name not in names:
                problems.append(f'operation "{self.name}" has no hyperparameter "{name}"'
                                + (f"; it takes {', '.join(sorted(names))}" if names else "; it takes none"))
        for p in self.params:
            if p.name not in args:
                problems.append(f'operation "{self.name}" needs hyperparameter "{p.name}" ({p.domain})')
            elif not p.accepts(args[p.name]):
                problems.append(f'"{self.name}" hyperparameter {p.name}={show_value(args[p.name])} '
                                f"is not {p.domain}")
        return problems

    def apply(self, features: Features, args: Args) -> Features:
        """The shape rule, with the arity of the group checked first."""
        if self.group in ("branching", "routing", "computation") and len(features) != 1:
            raise NotApplicable(f'"{self.name}" takes one feature, not {len(features)} branches')
        try:
            return self.infer(features, **dict(args))
        except (NotApplicable, EinError):
            raise
        except Exception as e:  # a bug in a user's (a plugin's) rule: one line naming the op, not a traceback
            from . import is_builtin  # (the package imports this module first)

            if is_builtin(self):  # a bug in einc: its traceback, for the CLI's INTERNAL ERROR
                raise
            raise OpError(f'operation "{self.name}": its shape rule failed on '
                          f'{", ".join(map(str, features))}: {type(e).__name__}: {e}') from e

    def finite_effect(self, mode: str | None, b: int, args: Args) -> Effect | None:
        """The (mode, b) after this op in any state with ``mode`` and ``b`` features, or None.

        The grammar's analysis and the bracket-notation parser know only this finite state;
        the sampler requires it too (besides the real shape rule), so every sampled string
        parses. Cached per (args, mode, b) on the op: the sampler asks on every leaf it draws.
        """
        key = (args, mode, b)
        try:
            return self._effects[key]
        except KeyError:
            out = self._effects[key] = _finite_effect(self, args, mode, b)
            return out


def show_value(v: Value) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, tuple):
        return "(" + ", ".join(map(str, v)) + ")"
    return str(v)


def positive(v: Any) -> bool:
    return type(v) is int and v >= 1


def natural(v: Any) -> bool:
    return type(v) is int and v >= 0


def one_of(*values: Any) -> Callable[[Any], bool]:
    return lambda v: type(v) is type(values[0]) and v in values


def single(features: Features) -> Feature:
    (f,) = features
    return f


def _finite_effect(op: Op, args: Args, mode: str | None, b: int) -> Effect | None:
    if op.effect is not None:
        out = op.effect(mode, b, **dict(args))
        if out is not None and not (isinstance(out, tuple) and len(out) == 2 and out[0] in ("Im", "Col", None)
                                    and type(out[1]) is int and out[1] >= 1):
            raise OpError(f'operation "{op.name}": effect returned {out!r}, not (mode, b) or None')
        return out
    try:
        out_fs = op.apply(representative(mode, b), args)
    except NotApplicable:
        return None
    return mode_of(out_fs), len(out_fs)
