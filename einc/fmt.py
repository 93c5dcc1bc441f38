"""The canonical *indented* form of an architecture, for files people read (``einc fmt``).

The one-line bracket string (``einc.notation.show``) stays the canonical text of journals and
APIs; this module lays the same string out over lines:

* a node whose one-line form fits in ``width`` columns (with its indent and trailing ``,``
  or closing brackets) stays on one line;
* otherwise it opens with ``name(`` or ``[`` and puts one child per line, indented two more
  spaces, each but the last followed by ``,``, and closes with ``)`` or ``]``/``]*b`` on a
  line of its own at the node's indent.

Nothing passes ``width`` but a line that cannot break: one operation with its hyperparameters,
or an opening ``name(`` / closing bracket nested deeper than the width allows.
Whitespace is free in bracket notation, so ``parse(fmt(t)) == t`` and formatting a formatted
text changes nothing. Pure text: no torch, no grammar needed for the layout itself.
"""

from __future__ import annotations

from .derivation import parse
from .notation import Item, Seq, parse_syntax, show
from .ops import show_value
from .table import RuleTable
from .tree import Node

WIDTH = 100
INDENT = "  "


def fmt(tree: Node, width: int = WIDTH) -> str:
    """The canonical indented text of ``tree`` (no trailing newline)."""
    return layout(parse_syntax(show(tree)), width)


def fmt_text(text: str, table: RuleTable, mode: str | None = None, width: int = WIDTH) -> str:
    """Parse ``text`` against ``table`` (input mode ``mode``, by default the grammar's) and format it."""
    return fmt(parse(text, table, mode), width)


def parse_any_mode(text: str, table: RuleTable, mode: str | None = None) -> Node:
    """Parse in ``mode``; without one, in the grammar's start mode, then in the other modes.

    A file holds no input shape, and a block such as an attention head is written for Col
    inputs; the error reported is the one for the grammar's own start mode.
    """
    from .errors import ArchError
    from .ops import MODES

    if mode is not None:
        return parse(text, table, mode)
    first = table.start.mode
    try:
        return parse(text, table, first)
    except ArchError as e:
        for m in MODES:
            if m != first:
                try:
                    return parse(text, table, m)
                except ArchError:
                    pass
        raise e


def layout(item: Item, width: int = WIDTH) -> str:
    """Lay out a syntax tree (``einc.notation.parse_syntax``) over lines of at most ``width`` columns."""
    lines: list[str] = []
    _layout(item, 0, "", lines, width)
    return "\n".join(lines)


def flat(item: Item) -> str:
    """The one-line text of a syntax item, spaced as the printer spaces it."""
    if isinstance(item, Seq):
        return "[" + ", ".join(flat(i) for i in item.items) + "]" + (f"*{item.repeat}" if item.repeat else "")
    parts = [f"{k}={show_value(v)}" for k, v in item.kwargs] + [flat(i) for i in item.items]
    return item.name + ("(" + ", ".join(parts) + ")" if parts or item.has_parens else "")


def _layout(item: Item, depth: int, trailer: str, lines: list[str], width: int) -> None:
    # an explicit stack, not recursion: deep trees lay out too
    stack: list[tuple[Item | str, int, str]] = [(item, depth, trailer)]
    while stack:
        it, d, tr = stack.pop()
        pad = INDENT * d
        if isinstance(it, str):  # a closing bracket, or a hyperparameter k=v on its own line
            lines.append(pad + it + tr)
            continue
        one = flat(it)
        children: list[Item | str]
        if isinstance(it, Seq):
            opener, children, closer = "[", list(it.items), "]" + (f"*{it.repeat}" if it.repeat else "")
        else:
            opener, closer = it.name + "(", ")"
            # an operation (hyperparameters only) is never broken; k=v lines only beside modules
            children = [f"{k}={show_value(v)}" for k, v in it.kwargs] + list(it.items) if it.items else []
        if len(pad) + len(one) + len(tr) <= width or not children:
            lines.append(pad + one + tr)
            continue
        lines.append(pad + opener)
        stack.append((closer, d, tr))
        for i in range(len(children) - 1, -1, -1):
            stack.append((children[i], d + 1, "," if i < len(children) - 1 else ""))
