"""``einc trials OUT``: every evaluation of a search as one flat row (runtime/trials.py)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ._common import _fail

SHOWN = ("index", "origin", "parent", "duplicate_of", "status", None, "params", "flops", "seconds", "reason")
"""The columns of the plain listing (None: the search's metric); --csv and --json give them all."""


@click.command()
@click.argument("out", type=click.Path(file_okay=False, exists=True))
@click.option("--csv", "form", flag_value="csv", help="Every column, as CSV with a header line.")
@click.option("--json", "form", flag_value="json", help="Every column, as a JSON list of objects.")
def trials(out: str, form: str | None) -> None:
    """Print every evaluation of the search in OUT, one row each, in index order (also while it runs).

    The columns: index, arch, origin, parent, duplicate_of, status, reason, the search's metric and
    the others journaled, params, flops, activations, rung, epochs, started, seconds, finished,
    worker, time_<phase>. `pandas.read_csv` or `pandas.DataFrame(json.load(f))` takes them as they
    are. Without --csv or --json: the main columns, aligned.
    """
    import warnings

    from einc.runtime.search import SearchConfig
    from einc.runtime.trials import columns, folder_records, rows, to_csv

    if not (Path(out) / "config.json").exists():
        _fail(f"{out}: error: not a search folder (no config.json)")
    config = SearchConfig.load(Path(out) / "config.json")
    goal = config.goal()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = rows(folder_records(out), goal, config.epochs)
    for w in caught:
        click.echo(str(w.message), err=True)
    if form == "csv":
        click.echo(to_csv(table) or ",".join(columns([], goal)) + "\n", nl=False)
    elif form == "json":
        click.echo(json.dumps(table, indent=1))
    else:
        click.echo(_aligned(table, [c or goal.metric for c in SHOWN]))


def _aligned(table: list[dict], cols: list[str]) -> str:
    def cell(v: object) -> str:
        if v is None:
            return "-"
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    text = [cols] + [[cell(r[c]) for c in cols] for r in table]
    widths = [max(len(row[k]) for row in text) for k in range(len(cols) - 1)]
    return "\n".join("  ".join([*(s.rjust(w) for s, w in zip(row, widths, strict=False)), row[-1]]).rstrip()
                     for row in text)
