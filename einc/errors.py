"""Source spans, diagnostics and the one exception family every stage raises.

Every message has the shape ``path:line:col: error: message  [code]`` (mypy's), optionally
followed by the offending source line and a caret (lark's context). The CLI prints
``EinError`` messages and exits 1; anything else escaping is a bug and keeps its traceback
(einc.cli: "INTERNAL ERROR", exit 70).
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Error codes: kebab-case name -> one-line description. Tests walk this registry.
CODES: dict[str, str] = {
    "syntax": "the text does not follow the .ein syntax",
    "include": "an included file cannot be read, or includes itself",
    "undefined-symbol": "a body, extend or override names a nonterminal that has no rule (above it)",
    "duplicate-rule": "two rules of one nonterminal can match the same parameter state",
    "duplicate-param": "a parameter is declared twice, or set twice in one place",
    "unknown-op": "an operation that is not in the operation library",
    "bad-hyperparameter": "an operation hyperparameter that is unknown, missing or out of range",
    "bad-guard": "a guard on an unknown parameter or with an impossible value",
    "bad-probability": "a probability outside [0, 1], or alternatives not summing to 1",
    "bad-branches": "a branch block that cannot match the branching factor",
    "bad-start": "a missing or malformed start declaration",
    "duplicate-label": "two alternatives of one rule have the same label (explicit or implied)",
    "ambiguous-name": "a name in bracket notation could stand for two different derivations",
    "unreachable": "a nonterminal no derivation from the start symbol can reach",
    "no-finite-derivation": "a nonterminal that can derive no finite tree",
    "guard-coverage": "a reachable nonterminal in a parameter state with no rule",
    "inconsistent": "the spectral radius of the expectation matrix is at least 1",
    "arch-syntax": "an architecture string that does not follow the bracket notation",
    "arch-derivation": "an architecture string that is not a derivation of the grammar",
    "shape": "an operation applied to a feature it does not accept",
    "input": "an input shape the grammar cannot take (rank, sizes or mode)",
}


@dataclass(frozen=True, slots=True)
class Span:
    """Where a piece of text came from: 1-based line and column, as printed."""

    path: str
    line: int
    col: int
    end_line: int = 0
    end_col: int = 0

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.col}"


@dataclass(frozen=True, slots=True)
class Diagnostic:
    span: Span | None
    severity: str  # "error" | "warning"
    code: str
    message: str
    source_line: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        assert self.code in CODES, self.code
        assert self.severity in ("error", "warning"), self.severity

    def render(self, context: bool = True) -> str:
        where = f"{self.span}: " if self.span else ""
        text = f"{where}{self.severity}: {self.message}  [{self.code}]"
        if context and self.source_line is not None and self.span is not None:
            text += "\n" + caret(self.source_line, self.span.col, self.span.end_col
                                 if self.span.end_line == self.span.line else 0)
        return text


def one_line(e: BaseException) -> str:
    """``Type: first line of the message``, at most 500 characters: an exception in a journal or a note."""
    lines = str(e).strip().splitlines()
    text = f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__
    return text if len(text) <= 500 else text[:497] + "..."


def show_char(c: str) -> str:
    """A character for a message: quoted when visible, else its code point (a NUL, a BOM)."""
    return f'"{c}"' if c.isprintable() and not c.isspace() else f"U+{ord(c):04X}"


def caret(line: str, col: int, end_col: int = 0) -> str:
    """The source line, then ``^~~~`` under columns ``col`` .. ``end_col`` (1-based).

    Invisible characters show as "?" so that the caret still lines up and a terminal is not
    sent control codes."""
    line = "".join(c if c.isprintable() else "?" for c in line.rstrip("\n").expandtabs(1))
    width = max(1, (end_col - col) if end_col > col else 1)
    return f"    {line}\n    {' ' * (col - 1)}^{'~' * (width - 1)}"


class EinError(Exception):
    """Root of every error einc reports to a user; ``str()`` is the full message."""


class EinCheckError(EinError):
    """A .ein file failed to compile; holds every diagnostic, sorted."""

    def __init__(self, diagnostics: list[Diagnostic]):
        self.diagnostics = sorted(
            set(diagnostics),
            key=lambda d: (d.span.path, d.span.line, d.span.col, d.code) if d.span else ("", 0, 0, d.code),
        )
        super().__init__("\n".join(d.render() for d in self.diagnostics))

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == "error"]


class ArchError(EinError):
    """An architecture string is malformed or not a derivation of the grammar.

    ``col`` is 1-based in the (single-line view of the) string; ``path`` is the node's path in
    the tree as child indices from the root, e.g. ``(0, 2, 1)``.
    """

    def __init__(self, message: str, text: str | None = None, line: int = 1, col: int = 0,
                 path: tuple[int, ...] | None = None, code: str = "arch-derivation"):
        self.reason, self.text, self.line, self.col, self.path, self.code = message, text, line, col, path, code
        where = f"{line}:{col}: " if col else ""
        at = f" (at node {format_path(path)})" if path is not None else ""
        msg = f"{where}error: {message}{at}  [{code}]"
        if text is not None and col:
            msg += "\n" + caret(text.splitlines()[line - 1] if text.splitlines() else "", col)
        super().__init__(msg)


class ShapeError(ArchError):
    """An operation in a tree does not accept the feature that reaches it."""

    def __init__(self, message: str, text: str | None = None, line: int = 1, col: int = 0,
                 path: tuple[int, ...] | None = None):
        super().__init__(message, text, line, col, path, code="shape")


class InputError(EinError):
    """An input shape the grammar cannot take: not C,H,W or S,D of positive sizes, or a mode in
    which the grammar derives nothing. Located at the start declaration when about the mode."""

    def __init__(self, message: str, span: Span | None = None):
        self.reason, self.span = message, span
        super().__init__(f"{span}: error: {message}  [input]" if span else f"error: {message}  [input]")


class LoweringError(EinError):
    """A tree could not be lowered to torch (a bug or a plugin fault, reported with its node)."""


def format_path(path: tuple[int, ...] | None) -> str:
    return "/" + "/".join(map(str, path)) if path else "/"
