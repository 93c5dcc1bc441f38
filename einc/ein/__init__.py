""".ein text -> RuleTable: ``syntax`` parses each file, ``includes`` reads the included files in
place, ``build`` gives the rules their guards, labels, variants and probabilities.

Semantic checks over the finished table live in einc/checks.py; ``compile_ein`` runs both
and raises one ``EinCheckError`` holding every error found.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from ..errors import Diagnostic, EinCheckError, Span
from ..ops import BUILTIN, Library
from ..table import RuleTable
from .build import PROB_TOLERANCE, _build, implied_label
from .includes import _read_text, _Sources, grammar_path, read_grammar, read_problem

__all__ = ["PROB_TOLERANCE", "analyse", "compile_ein", "grammar_path", "implied_label", "load", "read_ein",
           "read_grammar", "read_problem"]


def read_ein(text: str, path: str = "<string>", library: Library = BUILTIN):
    """Build the table without semantic checks; diagnostics so far (syntax, ops, probabilities)."""
    sources = _Sources()
    diags: list[Diagnostic] = []
    items = _read_text(text, path, sources, diags)
    every_text = "".join(f"\0{k}\0{v}" if k != path else v for k, v in sources.text.items())
    table = _build(items, path, library, sources, diags, every_text)
    if table is not None:
        table.cache["files"] = tuple(sources.text)
    return table, [_with_line(d, sources) for d in diags], sources


def _with_line(d: Diagnostic, sources: _Sources) -> Diagnostic:
    return d if d.source_line is not None else Diagnostic(d.span, d.severity, d.code, d.message, sources.line(d.span))


def analyse(text: str, path: str = "<string>", library: Library = BUILTIN):
    """Table, every diagnostic (errors and warnings) and the PCFG report (or None)."""
    from ..checks import run_checks

    table, diags, sources = read_ein(text, path, library)
    report = None
    if table is not None:
        extra, report = run_checks(table, sources.diag, has_errors=any(d.severity == "error" for d in diags))
        diags = diags + extra
    return table, sorted(set(diags), key=_order), report


def _order(d: Diagnostic):
    return (d.span.path, d.span.line, d.span.col, d.code) if d.span else ("", 0, 0, d.code)


def compile_ein(text: str, path: str = "<string>", library: Library = BUILTIN) -> RuleTable:
    """Compile .ein text to a checked RuleTable, or raise EinCheckError with every error.

    Memoised on the text; a table whose included files changed since is compiled afresh."""
    table = _compile_cached(text, path, library)
    if any(_stamp(f) != stamp for f, stamp in table.cache.get("includes", {}).items()):
        _compile_cached.cache_clear()
        table = _compile_cached(text, path, library)
    return table


@lru_cache(maxsize=32)
def _compile_cached(text: str, path: str, library: Library) -> RuleTable:
    table, diags, report = analyse(text, path, library)
    if table is None or any(d.severity == "error" for d in diags):
        raise EinCheckError([d for d in diags if d.severity == "error"])
    table.cache["report"] = report  # the start mode's PCFG numbers (einc fit reads its rho)
    table.cache["includes"] = {f: _stamp(f) for f in table.cache.get("files", ()) if f != path}
    return table


def _stamp(path: str) -> tuple | None:
    try:
        st = Path(path).stat()
        return st.st_mtime_ns, st.st_size
    except (OSError, ValueError):
        return None


def load(path: str | Path, library: Library = BUILTIN) -> RuleTable:
    """Compile a .ein file (a path, or a bundled grammar's name such as "einspace")."""
    p = grammar_path(path)
    try:
        text = read_grammar(p)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise EinCheckError([Diagnostic(Span(str(path), 1, 1), "error", "include",
                                        f'cannot read "{path}": {read_problem(e)}')]) from None
    return compile_ein(text, str(p), library)
