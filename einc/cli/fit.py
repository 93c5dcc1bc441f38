"""``einc fit``: a grammar's rule probabilities learnt from a search journal's best architectures."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import ArchError
from ._common import _fail, _plugin_option, load_plugins


@click.command("fit")
@click.argument("journal", type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Where to write the fitted .ein.")
@click.option("--top", type=click.IntRange(1), default=10, show_default=True,
              help="Fit to the K best evaluated architectures (status ok, best by the search's metric).")
@click.option("--strength", type=click.FloatRange(0, min_open=True), default=10.0, show_default=True,
              help="Dirichlet prior strength S: pseudo-counts per rule on the grammar's own probabilities.")
@click.option("--grammar", "-g", default=None,
              help="The grammar the search used [default: the one in config.json beside the journal, else einspace].")
@_plugin_option
def fit_(journal: str, output: str, top: int, strength: float, grammar: str | None,
         plugins: tuple[str, ...] = ()) -> None:
    """Learn GRAMMAR's rule probabilities from the best architectures of a search.

    JOURNAL is a search's journal.jsonl or the folder holding it. Writes OUTPUT: the grammar's
    own text with new @ probabilities (comments and layout kept), consistent (rho <= 0.99).
    """
    import warnings

    from einc.runtime.goal import ACCURACY
    from einc.runtime.journal import Journal

    from ..ein import grammar_path, read_grammar, read_problem
    from ..fit import FitError, fit_grammar, parse_either
    from ..notation import show

    path = Path(journal)
    if path.is_dir():
        path = path / "journal.jsonl"
    if not path.is_file():
        _fail(f"{path}: error: no such journal file")
    saved = _saved_search(path.parent / "config.json")
    if grammar is None:
        grammar = saved.grammar if saved is not None else "einspace"
    gpath = grammar_path(grammar)
    try:
        text = read_grammar(gpath)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        _fail(f"{grammar}:1:1: error: cannot read the grammar: {read_problem(e)} (give --grammar)")
    from .. import compile_grammar

    library = load_plugins(plugins or (saved.plugins if saved is not None else ()))
    g = compile_grammar(text, str(gpath), library)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        records = Journal(path).records()
    for w in caught:
        click.echo(str(w.message), err=True)
    goal = saved.goal() if saved is not None else ACCURACY
    best: dict[str, tuple[tuple[int, float], int, dict]] = {}
    for r in records:  # each architecture's best evaluation, by the search's own goal (any rung first)
        score = goal.score(r) if r.get("kind", "eval") == "eval" else None
        if score is not None and (r["arch"] not in best or (score, -r["index"]) > (best[r["arch"]][0],
                                                                                  -best[r["arch"]][1])):
            best[r["arch"]] = (score, r["index"], r)
    if not best:
        _fail(f"{path}: error: no evaluated architecture (status ok with a numeric metrics.{goal.metric}) to fit to")
    chosen = sorted(best.items(), key=lambda kv: (kv[1][0], -kv[1][1]), reverse=True)[:top]
    archs, other_hash = [], 0
    for arch, (_, index, r) in chosen:
        try:
            tree, _ = parse_either(arch, g.table)
        except ArchError as e:
            _fail(f"{path}: record {index}: error: not a derivation of {grammar} "
                  f"({str(e).splitlines()[0]}); give the search's grammar with --grammar")
        archs.append(show(tree))
        other_hash += r.get("grammar_hash") not in (None, g.hash)
    accs = [goal.value(r) or 0.0 for _, (_, _, r) in chosen]
    span = f"{goal.metric} {min(accs):.4f} to {max(accs):.4f}"
    header = [f"Fitted by `einc fit` from {path}: the K={len(chosen)} best of {len(best)} distinct architectures",
              f"evaluated (status ok; {span}). Dirichlet prior of strength "
              f"S={strength:g}",
              f"on the probabilities of {grammar}; counts pooled per rule (grammar/README.md, \"Learning the",
              "probabilities\")."]
    try:
        result = fit_grammar(text, str(gpath), archs, strength, header=header, library=library)
    except FitError as e:
        _fail(str(e) if ": error:" in str(e) else f"{gpath}: error: {e}")
    try:
        Path(output).write_text(result.text, encoding="utf-8")
    except OSError as e:
        _fail(f"{output}: error: cannot write: {e.strerror or type(e).__name__}")
    if len(chosen) < top:
        click.echo(f"note: only {len(chosen)} distinct evaluated architectures in the journal (asked for {top})")
    if other_hash:
        click.echo(f"note: {other_hash} of them were recorded with another grammar hash; they parse with {grammar}")
    click.echo(f"wrote {output}: {grammar} fitted to the {len(chosen)} best of {len(best)} "
               f"({span}), S={strength:g}")
    click.echo(f"spectral radius: grammar {result.rho_prior:.4f}, fitted {result.rho:.4f}")
    if result.shrink > 0:
        click.echo(f"shrunk towards the prior by t = {result.shrink:.4f} to keep rho <= 0.99 as written "
                   f"(the plain fit has rho = {result.rho_fit:.4f})")
    for line in result.notes:
        click.echo("  " + line)


def _saved_search(config: Path):
    """The SearchConfig recorded beside a journal (read once), or None when there is none."""
    from einc.runtime.search import SearchConfig, SearchError

    if not config.is_file():
        return None
    try:
        return SearchConfig.load(config)
    except SearchError as e:
        _fail(f"{e}; give --grammar and --plugin, or remove it")
