"""Reading grammar files: a top file with every include read in place, and the texts kept for
diagnostics' caret lines.

An include is found beside the including file, else among the bundled grammars by its bare
name; a cycle is an error and a file included twice (a diamond) is read once. ``grammar_path``,
``read_grammar`` and ``read_problem`` are how every command reads a grammar file too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from ..errors import Diagnostic, Span
from .syntax import _RawItem, parse_items


class _Sources:
    """Every file read in one compilation, for include resolution and caret lines."""

    def __init__(self) -> None:
        self.text: dict[str, str] = {}
        self.read: set[str] = set()  # resolved paths of the files read

    def line(self, span: Span | None) -> str | None:
        if span is None or span.path not in self.text:
            return None
        lines = self.text[span.path].splitlines()
        return lines[span.line - 1] if 0 < span.line <= len(lines) else None

    def diag(self, span: Span | None, code: str, message: str, severity: str = "error") -> Diagnostic:
        return Diagnostic(span, severity, code, message, self.line(span))


def _load(path: Path, sources: _Sources, chain: frozenset[str], names: tuple[str, ...],
          diags: list[Diagnostic], at: Span | None) -> str | None:
    """The text of an included file, or None (a cycle, a file read already, or an error)."""
    norm = _norm(str(path))
    if norm in chain:
        diags.append(sources.diag(at, "include", f'"{path.name}" includes itself (through '
                                  + " -> ".join([*(Path(s).name for s in names), path.name]) + ")"))
        return None
    if norm in sources.read:
        return None  # included once already (a diamond, not a cycle): its rules are in the table
    if path.suffix != ".ein":
        # only grammar files: an error in any other file would echo its first line
        diags.append(sources.diag(at, "include", f'"{path}" is not a .ein file; include reads grammars only'))
        return None
    try:
        return read_grammar(path)
    except (OSError, UnicodeDecodeError, ValueError) as e:  # ValueError: a NUL in the path
        diags.append(sources.diag(at, "include", f'cannot read "{path}": {read_problem(e)}'))
        return None


def _bundled_include(name: str, target: Path) -> Path:
    """A bare file name that is not beside the including file but names a bundled grammar
    (``include "einspace.ein"``) reads the bundled one; anything else stays as written."""
    if "/" in name or "\\" in name or not name.endswith(".ein"):
        return target
    from ..grammar import bundled

    try:
        return bundled(name)
    except FileNotFoundError:
        return target


def _norm(key: str) -> str:
    """A file's identity for cycle and diamond checks (the top file's path may be relative)."""
    try:
        return str(Path(key).resolve())
    except (OSError, ValueError, RuntimeError):
        return key


def _items(text: str, key: str, sources: _Sources, diags: list[Diagnostic]) -> list:
    """One file's raw items, includes not yet resolved; its text is kept for caret lines."""
    text = text.removeprefix("\ufeff")  # a UTF-8 byte-order mark is no part of the text
    sources.text[key] = text
    sources.read.add(_norm(key))
    return parse_items(text, key, diags)


def _read_text(text: str, key: str, sources: _Sources, diags: list[Diagnostic]) -> list:
    """Raw items of ``text`` with every include read in place, by an explicit stack (any depth)."""
    out: list = []
    # (items left, this file's key, files including it (normalised), their names for messages)
    stack: list[tuple[Iterator, str, frozenset[str], tuple[str, ...]]] = [
        (iter(_items(text, key, sources, diags)), key, frozenset([_norm(key)]), (key,))]
    while stack:
        items, key, chain, names = stack[-1]
        item = next(items, None)
        if item is None:
            stack.pop()
        elif isinstance(item, _RawItem) and item.kind == "include":
            target = Path(key).parent / item.data[0]
            with contextlib.suppress(OSError, ValueError, RuntimeError):  # a name too long, a NUL: _load reports it
                target = target.resolve() if target.exists() else _bundled_include(item.data[0], target)
            inner = _load(target, sources, chain, names, diags, item.span)
            if inner is not None:
                tkey = str(target)
                stack.append((iter(_items(inner, tkey, sources, diags)), tkey, chain | {_norm(tkey)},
                              names + (tkey,)))
        else:
            out.append(item)
    return out


def read_grammar(path: Path) -> str:
    """A grammar file's text. A directory, device or pipe is refused before reading: /dev/zero
    would never end."""
    if path.exists() and not path.is_file():
        raise OSError(0, "a directory" if path.is_dir() else "not a regular file")
    return path.read_text(encoding="utf-8")


def read_problem(e: Exception) -> str:
    """Why a file could not be read, in a few words."""
    if isinstance(e, UnicodeDecodeError):
        return "not UTF-8 text"
    return (e.strerror if isinstance(e, OSError) and e.strerror else str(e) if type(e) is ValueError
            else type(e).__name__)


def grammar_path(path: str | Path) -> Path:
    """A path as given, or the bundled grammar of that name (``"einspace"``)."""
    p = Path(path)
    try:
        if p.exists() or p.suffix:
            return p
    except (OSError, ValueError):  # a name too long for a path, or with a NUL: not a file
        return p
    from ..grammar import bundled

    try:
        return bundled(str(path))
    except FileNotFoundError:
        return p
