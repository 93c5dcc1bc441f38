"""Bracket notation: architecture text <-> generic items, and a derivation tree -> its canonical text.

This module knows the notation only, not any grammar: ``parse_syntax`` turns text into
generic items (``Call``, ``Seq``) by a hand-written tokenizer and recursive-descent parser
(the specification is grammar/arch.lark; tests check the two agree), and ``show`` prints a
tree. einc.derivation resolves items against a grammar's rules into a tree.

Both run without Python recursion (einc.tree.deep and explicit stacks), so any tree the
sampler's budget admits prints and parses back, however deep.

Canonical printing (``show``): labelled alternatives as ``label(child, ...)``; unlabelled
single-element alternatives are elided; a right-nested chain of one binary label whose body
is ``X X`` is written flat (``sequential(a, b, c)`` is ``sequential(a, sequential(b, c))``);
independent branches as ``[a, b]``, one repeated subtree as ``[a]*4``; op arguments in the
op's own declared order (``einc.ops.param_order``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from .errors import ArchError, show_char
from .ops import Value, param_order, show_value
from .tree import Expansion, Fork, Leaf, Node, deep

__all__ = ["MAX_NESTING", "Call", "Item", "Seq", "parse_syntax", "parse_syntax_lark", "show"]

MAX_NESTING = 250_000
"""Deepest nesting of brackets parsed: above twice the largest ``Budget.max_depth`` (a tree's
string nests at most one level per nonterminal or branch list), a bound on memory only."""

# ---------------------------------------------------------------- syntax


@dataclass(frozen=True, slots=True)
class Call:
    name: str
    kwargs: tuple[tuple[str, Value], ...]
    items: tuple[Item, ...]
    line: int
    col: int
    has_parens: bool = False


@dataclass(frozen=True, slots=True)
class Seq:
    items: tuple[Item, ...]
    repeat: int | None
    line: int
    col: int


Item = Call | Seq

_TOKEN = re.compile(r"(?P<ws>[ \t\r\n]+)|(?P<name>[a-z][a-z0-9_]*(?:-[a-z0-9_]+)*)|(?P<int>\d+)|(?P<p>[()\[\],=*])")


def _tokens(text: str) -> list[tuple[str, str, int, int]]:
    """(kind, text, line, col) tokens; kinds: name, int, the punctuation itself, and 'end'."""
    out, line, line_start, pos = [], 1, 0, 0
    n = len(text)
    while pos < n:
        m = _TOKEN.match(text, pos)
        if m is None:
            raise ArchError(f"unexpected character {show_char(text[pos])}", text, line, pos - line_start + 1,
                            code="arch-syntax")
        kind = m.lastgroup or ""
        tok = m.group()
        if kind == "ws":
            nl = tok.count("\n")
            if nl:
                line += nl
                line_start = pos + tok.rfind("\n") + 1
        else:
            if kind == "name" and tok in ("true", "false"):
                kind = tok
            out.append((tok if kind == "p" else kind, tok, line, pos - line_start + 1))
        pos = m.end()
    out.append(("end", "", line, pos - line_start + 1))
    return out


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.toks = _tokens(text)
        self.i = 0

    def fail(self, expected: str) -> ArchError:
        kind, tok, line, col = self.toks[self.i]
        found = "end of the string" if kind == "end" else f'"{tok}"'
        return ArchError(f"unexpected {found}; expected {expected}", self.text, line, col, code="arch-syntax")

    def take(self, kind: str, expected: str) -> tuple[str, str, int, int]:
        tok = self.toks[self.i]
        if tok[0] != kind:
            raise self.fail(expected)
        self.i += 1
        return tok

    def item(self, depth: int):
        """One item; a generator run by ``deep`` (``yield self.item(...)`` is the recursive call)."""
        if depth > MAX_NESTING:
            raise self.fail(f"less than {MAX_NESTING} levels of nesting")
        kind, tok, line, col = self.toks[self.i]
        if kind == "[":
            self.i += 1
            elems = [(yield self.item(depth + 1))]
            while self.toks[self.i][0] == ",":
                self.i += 1
                elems.append((yield self.item(depth + 1)))
            self.take("]", '"," or "]"')
            repeat = None
            if self.toks[self.i][0] == "*":
                self.i += 1
                repeat = int(self.take("int", "a number of copies")[1])
            return Seq(tuple(elems), repeat, line, col)
        if kind != "name":
            raise self.fail('a name or "["')
        self.i += 1
        if self.toks[self.i][0] != "(":
            return Call(tok, (), (), line, col)
        self.i += 1
        kwargs: list[tuple[str, Value]] = []
        items: list[Item] = []
        if self.toks[self.i][0] != ")":
            while True:
                if self.toks[self.i][0] == "name" and self.toks[self.i + 1][0] == "=":
                    key = self.toks[self.i][1]
                    self.i += 2
                    kwargs.append((key, self.value()))
                else:
                    items.append((yield self.item(depth + 1)))
                if self.toks[self.i][0] != ",":
                    break
                self.i += 1
        self.take(")", '"," or ")"')
        return Call(tok, tuple(kwargs), tuple(items), line, col, True)

    def value(self) -> Value:
        kind, tok, line, col = self.toks[self.i]
        if kind == "int":
            self.i += 1
            return int(tok)
        if kind in ("true", "false"):
            self.i += 1
            return kind == "true"
        if kind == "(":
            self.i += 1
            vals = [int(self.take("int", "a number")[1])]
            while self.toks[self.i][0] == ",":
                self.i += 1
                vals.append(int(self.take("int", "a number")[1]))
            self.take(")", '"," or ")"')
            return tuple(vals)
        raise self.fail("a value (a number, true, false or a tuple)")


def parse_syntax(text: str) -> Item:
    """Text -> generic items, without the grammar (the fast path)."""
    p = _Parser(strip_bom(text))
    item = deep(p.item(0))
    p.take("end", "the end of the string")
    return item


def strip_bom(text: str) -> str:
    """Text as an editor shows it: a leading UTF-8 byte-order mark is not part of it."""
    return text.removeprefix("\ufeff")


@lru_cache(maxsize=1)
def _lark():
    from lark import Lark

    from .grammar import ARCH_LARK

    return Lark(ARCH_LARK.read_text(encoding="utf-8"), parser="lalr", propagate_positions=True,
                maybe_placeholders=False)


def parse_syntax_lark(text: str) -> Item:
    """The same as ``parse_syntax``, by the Lark specification (slower; used by tests)."""
    from lark import Token, Tree
    from lark.exceptions import UnexpectedInput

    try:
        tree = _lark().parse(text)
    except UnexpectedInput as e:
        raise ArchError("does not follow the bracket notation", text, e.line, e.column, code="arch-syntax") from None

    def conv(t) -> Item:
        if t.data == "call":
            name = t.children[0]
            kwargs, items = [], []
            for c in t.children[1:]:
                if c.data == "kv":
                    kwargs.append((str(c.children[0]), val(c.children[1])))
                else:
                    items.append(conv(c))
            has_parens = t.meta.end_pos > name.end_pos
            return Call(str(name), tuple(kwargs), tuple(items), name.line, name.column, has_parens)
        kids = [c for c in t.children if isinstance(c, Tree)]
        rep = [c for c in t.children if isinstance(c, Token)]
        return Seq(tuple(conv(c) for c in kids), int(rep[0]) if rep else None, t.meta.line, t.meta.column)

    def val(v) -> Value:
        if v.data == "int":
            return int(v.children[0])
        if v.data in ("true", "false"):
            return v.data == "true"
        return tuple(int(c) for c in v.children)

    return conv(tree.children[0])


# ---------------------------------------------------------------- printing


def show(tree: Node) -> str:
    """The canonical bracket string of a tree (an explicit stack: any depth prints)."""
    out: list[str] = []
    todo: list = [(tree, None)]  # (node, label of the flat chain it continues) or a literal string
    while todo:
        job = todo.pop()
        if isinstance(job, str):
            out.append(job)
            continue
        node, flat_label = job
        if isinstance(node, Leaf):
            out.append(node.op)
            if node.args:
                order = _arg_order(node.op)
                args = sorted(node.args, key=lambda kv: order.get(kv[0], 99))
                out.append("(" + ", ".join(f"{k}={show_value(v)}" for k, v in args) + ")")
            continue
        parts: list = []  # what this node prints, in order; pushed reversed below
        if isinstance(node, Fork):
            parts.append("[")
            for i, c in enumerate(node.children):
                parts += [", "] * bool(i) + [(c, None)]
            parts.append("]" + (f"*{node.copies}" if node.repeated else ""))
        elif node.label is None and len(node.children) == 1:
            parts.append((node.children[0], None))
        else:
            if flat_label is None:
                parts.append((node.label or node.head) + "(")
            kids = node.children
            for i, c in enumerate(kids):
                last = i == len(kids) - 1
                parts += [", "] * bool(i) + [(c, node.label if last and flattens(node, c) else None)]
            if flat_label is None:
                parts.append(")")
        todo.extend(reversed(parts))
    return "".join(out)


def flattens(parent: Expansion, child: Node) -> bool:
    """Whether ``child`` prints inside ``parent``'s brackets: a chain of one label, as in sequential(a, b, c)."""
    return (len(parent.children) == 2 and isinstance(child, Expansion) and child.label == parent.label
            and parent.label is not None and len(child.children) == 2
            and isinstance(parent.children[0], Expansion) and parent.children[0].head == child.head)


def _arg_order(op: str) -> dict[str, int]:
    return param_order(op)
