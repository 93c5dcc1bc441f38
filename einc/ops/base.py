"""What an operation is: its hyperparameters, its shape rule, its cost and its torch lowering.

An operation never imports torch at module level; its ``lower`` hook does, when called.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from .state import Feature, Features

GROUPS = ("branching", "aggregation", "routing", "computation")
Value = int | bool | str | tuple[int, ...]
Args = tuple[tuple[str, Value], ...]
"""Hyperparameters as sorted (name, value) pairs: hashable, canonical."""


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


@dataclass(frozen=True, slots=True)
class Op:
    """One operation of the library (paper A.2).

    ``infer(features, **args)`` returns the output features or raises ``NotApplicable``;
    ``cost(features, **args)`` gives parameters and FLOPs per sample for that input;
    ``lower(ctx, nodes, features, **args)`` adds the op to a torch.fx graph (see einc.lower).
    Arity follows from the group: branching 1->b, aggregation b->1, the others 1->1.
    """

    name: str
    group: str
    params: tuple[Param, ...]
    infer: Callable[..., Features]
    cost: Callable[..., Cost] = field(default=lambda features, **args: Cost())
    lower: Callable[..., Any] | None = None
    doc: str = ""

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
        return self.infer(features, **dict(args))


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
