"""The operation library: every operation a .ein file may name, one definition each.

A user's own operations join only through ``Library.extend`` (the CLI's ``--plugin``); a
.ein file can name operations but never define or load them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType

from . import aggregation, branching, computation, routing
from .base import GROUPS, Args, Cost, Effect, NotApplicable, Op, OpError, Param, Value, param_order, show_value
from .state import COL, IM, MODES, Feature, Features, feature_for, mode_of, representative


class Library(Mapping[str, Op]):
    """An immutable name -> Op mapping; ``extend`` returns a new library."""

    def __init__(self, ops: Iterable[Op]):
        table: dict[str, Op] = {}
        for op in ops:
            if op.name in table:
                raise ValueError(f'operation "{op.name}" is defined twice')
            table[op.name] = op
        self._ops = MappingProxyType(table)

    def __getitem__(self, name: str) -> Op:
        return self._ops[name]

    def __iter__(self):
        return iter(self._ops)

    def __len__(self) -> int:
        return len(self._ops)

    def __hash__(self) -> int:
        return hash(tuple(self._ops))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Library) and dict(self._ops) == dict(other._ops)

    def extend(self, ops: Iterable[Op]) -> Library:
        return Library([*self._ops.values(), *ops])


BUILTIN = Library([*branching.OPS, *aggregation.OPS, *routing.OPS, *computation.OPS])


def is_builtin(op: Op) -> bool:
    """Whether ``op`` is one of einc's own operations (the very object in ``BUILTIN``), not one a
    user made (a plugin's, or one built through the API). A built-in op's hook that raises is a
    bug in einc and keeps its traceback; a user's is reported in one line naming the op."""
    return BUILTIN.get(op.name) is op


__all__ = ["Args", "BUILTIN", "COL", "Cost", "Effect", "Feature", "Features", "GROUPS", "IM", "Library", "MODES",
           "NotApplicable", "Op", "OpError", "Param", "Value", "feature_for", "is_builtin", "mode_of", "param_order",
           "representative", "show_value"]
