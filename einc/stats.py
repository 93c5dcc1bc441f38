"""Size statistics of sampled derivations, laid out like the paper's Table 6."""

from __future__ import annotations

import statistics
from collections.abc import Iterable

from .tree import Expansion, counts


def table6_rows(trees: Iterable[Expansion]) -> dict[str, list[float]]:
    """Per tree: terminals, nonterminals and mean branching factor (1 for a tree with no fork)."""
    rows: dict[str, list[float]] = {"terminals": [], "non-terminals": [], "branching factor": []}
    for t in trees:
        c = counts(t)
        rows["terminals"].append(c.terminals)
        rows["non-terminals"].append(c.nonterminals)
        rows["branching factor"].append(statistics.fmean(c.branching) if c.branching else 1.0)
    return rows


def five_numbers(values: list[float]) -> dict[str, float]:
    """min, mean, median, std and max of ``values``."""
    return {"min": min(values), "mean": statistics.fmean(values), "median": statistics.median(values),
            "std": statistics.pstdev(values), "max": max(values)}


def describe(rows: dict[str, list[float]]) -> str:
    lines = [f"{'':18s}{'min':>8s}{'mean':>10s}{'median':>10s}{'std':>10s}{'max':>10s}"]
    for name, values in rows.items():
        s = five_numbers(values)
        lines.append(f"{name:18s}{s['min']:8.2f}{s['mean']:10.2f}{s['median']:10.2f}{s['std']:10.2f}{s['max']:10.2f}")
    return "\n".join(lines)
