"""Every evaluation of a search as one flat row: what ``einc trials``, ``einc.search``'s result,
``einc.Study`` and the report page all show.

A journal line nests (``metrics``, ``timing``) and leaves out what does not apply (``rung``
without multi-fidelity, ``reason`` when it succeeded); a table wants the same columns in every
row, scalars only, so that ``pandas.DataFrame(rows)`` or a spreadsheet takes it as it is. One
function builds a row from a record, so the four agree:

    index, arch, origin, parent, duplicate_of, status, reason,
    <the goal's metric (val_acc, val_rel_l2, score, ...)>, <the other metrics, sorted>,
    params, flops, activations, rung, epochs, started, seconds, finished, worker, time_<phase>...

``started``/``finished`` are epoch seconds, ``seconds`` the evaluation's duration (0 for a repeat,
which reuses ``duplicate_of``'s result), ``time_build``/``time_train`` its phases. A metric whose
name is taken by a column above is ``metric_<name>``; a metric that is not a number, string or
boolean is its JSON text.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .goal import ACCURACY, Goal
from .journal import Journal

HEAD = ("index", "arch", "origin", "parent", "duplicate_of", "status", "reason")
COSTS = ("params", "flops", "activations", "rung", "epochs", "started", "seconds", "finished", "worker")
TAKEN = frozenset(HEAD + COSTS)


def row(record: dict[str, Any], goal: Goal = ACCURACY, epochs: int | None = None) -> dict[str, Any]:
    """One evaluation record as a flat dict (its own keys only; ``rows`` gives every row all columns).

    ``epochs``: what an evaluation without its own ``epochs`` trained for (the search's setting)."""
    metrics = dict(record.get("metrics") or {})
    out: dict[str, Any] = {k: record.get(k) for k in HEAD}
    out[goal.metric] = goal.value(record)
    for key in sorted(metrics):
        if key not in (goal.metric, "epochs"):
            out[f"metric_{key}" if key in TAKEN else key] = _scalar(metrics[key])
    for key in COSTS:
        out[key] = record.get(key)
    out["epochs"] = record.get("epochs", metrics.get("epochs", epochs))
    for phase, seconds in sorted((record.get("timing") or {}).items()):
        out[f"time_{phase}"] = seconds
    return out


def rows(records: Iterable[dict[str, Any]], goal: Goal = ACCURACY, epochs: int | None = None) -> list[dict[str, Any]]:
    """The evaluation records among ``records`` (any kinds, any order) as rows in index order, every
    row with the same columns (None where a record has no value)."""
    evals = sorted((r for r in records if r.get("kind", "eval") == "eval"), key=lambda r: r["index"])
    flat = [row(r, goal, epochs) for r in evals]
    cols = columns(flat, goal)
    return [{c: f.get(c) for c in cols} for f in flat]


def columns(flat: list[dict[str, Any]], goal: Goal = ACCURACY) -> list[str]:
    """Every key of ``flat`` in the order of the module docstring."""
    seen: dict[str, None] = dict.fromkeys(HEAD + (goal.metric,))
    extra = sorted({k for f in flat for k in f} - set(seen) - TAKEN)
    metrics = [k for k in extra if not k.startswith("time_")]
    return [*seen, *metrics, *COSTS, *(k for k in extra if k.startswith("time_"))]


def folder_records(out: str | Path) -> list[dict[str, Any]]:
    """A search folder's journal, with the results that wait in ``journal.jsonl.pending`` for their
    turn (a running search's finished evaluations; runtime/schedule.py)."""
    path = Path(out) / "journal.jsonl"
    waiting = path.with_name(path.name + ".pending")
    return with_pending(Journal(path).records(), Journal(waiting).records() if waiting.exists() else [])


def with_pending(records: list[dict[str, Any]], pending: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``records`` and the pending results not journaled yet (a stale copy of a journaled one is left out)."""
    seen = {r["index"] for r in records if r.get("kind", "eval") == "eval"}
    return records + [r for r in pending if r.get("index") not in seen]


def to_csv(table: list[dict[str, Any]]) -> str:
    """``rows`` as CSV with a header line (empty cells for None)."""
    buf = io.StringIO()
    if table:
        w = csv.DictWriter(buf, fieldnames=list(table[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(table)
    return buf.getvalue()


def _scalar(value: Any) -> Any:
    return value if value is None or isinstance(value, (bool, int, float, str)) else json.dumps(value)
