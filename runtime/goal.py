"""What a search optimises: one metric of an evaluation record, maximised or minimised.

A classification search maximises ``val_acc``; a Darcy-flow search minimises ``val_rel_l2``; a
user's own objective returns ``score``. Everything that ranks evaluations (evolution's
tournaments, successive halving's promotions, the best of a search, the Pareto front) asks a
``Goal`` rather than reading an accuracy, so a minimised metric needs no special case anywhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

Score = tuple[int, float]
"""(rung, oriented value): any longer training (higher rung) beats any shorter one; within a rung a
larger oriented value is better (a minimised metric is negated)."""


@dataclass(frozen=True)
class Goal:
    metric: str = "val_acc"   # the key in a record's ``metrics``
    minimize: bool = False

    def value(self, record: dict[str, Any]) -> float | None:
        """The metric of a successful evaluation as recorded; None when it failed or holds no finite value."""
        if record.get("status") != "ok":
            return None
        v = record.get("metrics", {}).get(self.metric)
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None

    def fitness(self, record: dict[str, Any]) -> float | None:
        """The value, oriented so that larger is better."""
        v = self.value(record)
        return None if v is None else (-v if self.minimize else v)

    def score(self, record: dict[str, Any]) -> Score | None:
        """What a strategy is told and what picks the best: ``(rung, fitness)``."""
        f = self.fitness(record)
        return None if f is None else (record.get("rung", 0), f)

    def best(self, records: list[dict[str, Any]]) -> dict[str, Any] | None:
        """The evaluation with the highest score (the highest rung first), earliest on ties."""
        ok = [(s, r) for r in records if r.get("kind", "eval") == "eval" and (s := self.score(r)) is not None]
        return max(ok, key=lambda t: (t[0], -t[1]["index"]))[1] if ok else None

    def better(self, a: float, b: float) -> bool:
        """Is metric value ``a`` better than ``b``?"""
        return a < b if self.minimize else a > b


ACCURACY = Goal()
