"""One .ein file's text -> raw items (rules, includes, params, start), every value with its span.

Lark parses with grammar/ein.lark; one Transformer gives the tree its meaning; a syntax error
becomes one located diagnostic naming what was expected. Includes are not followed here
(``includes``) and nothing is checked against the library yet (``build``).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import lru_cache

from lark import Lark, Token, Transformer, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from ..errors import Diagnostic, Span, show_char
from ..ops import Value, show_value
from ..table import Arm, Branches, Guard, Ref

# Friendly names of terminals in syntax errors.
_TERMINALS = {
    "UPPER": "a nonterminal (Uppercase name)", "LOWER": "a lowercase name", "NUMBER": "a number",
    "STRING": 'a quoted path', "_NL": "a new line", "_OR": '"|"', "$END": "the end of the file",
    "_ARROW": '"->"', "_EQ": '"="', "_COLON": '":"', "_COMMA": '","', "_AT": '"@"', "_STAR": '"*"',
    "_SLASH": '"/"', "_PLUS": '"+"', "_MINUS": '"-"', "_LPAR": '"("', "_RPAR": '")"', "_LSQB": '"["',
    "_RSQB": '"]"', "_LBRACE": '"{"', "_RBRACE": '"}"', "_IN": '"in"', "_TRUE": '"true"',
    "_FALSE": '"false"', "_INCLUDE": '"include"', "_PARAM": '"param"', "_START": '"start"',
    "_EXTEND": '"extend"', "_OVERRIDE": '"override"',
}


@lru_cache(maxsize=1)
def _parser() -> Lark:
    from ..grammar import EIN_LARK

    return Lark(EIN_LARK.read_text(encoding="utf-8"), parser="lalr", propagate_positions=True, maybe_placeholders=True)


# ---------------------------------------------------------------- raw syntax, with spans


@dataclass(frozen=True)
class _RawOp:
    name: str
    fixed: tuple[tuple[str, Value], ...]
    choices: tuple[tuple[tuple[str, ...], tuple[Value, ...]], ...]  # (names, values) pairs
    span: Span

    def variants(self) -> list[tuple[tuple[str, Value], ...]]:
        """One sorted args tuple per variant: the product over the variant sets."""
        axes = []
        for names, values in self.choices:
            # a joint choice's values are tuples of its names' length (checked when read)
            axes.append([tuple(zip(names, v if len(names) > 1 else (v,), strict=True))  # type: ignore[arg-type]
                         for v in values])
        out = []
        for combo in itertools.product(*axes):
            args = dict(self.fixed)
            for pairs in combo:
                args.update(pairs)
            out.append(tuple(sorted(args.items())))
        return out


@dataclass(frozen=True)
class _RawAlt:
    label: str | None
    body: tuple
    prob: float | None
    span: Span


@dataclass(frozen=True)
class _RawRule:
    head: str
    guards: tuple[Guard, ...]
    alts: tuple[_RawAlt, ...]
    span: Span
    kind: str = "rule"  # rule | extend | override


@dataclass(frozen=True)
class _RawItem:
    kind: str  # include | param | start
    data: tuple
    span: Span


class _BadValue(Exception):
    def __init__(self, message: str, span: Span):
        self.message, self.span = message, span


@v_args(meta=True)
class _ToRaw(Transformer):
    """Lark tree -> raw items; every value keeps its span."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def _span(self, meta) -> Span:
        return Span(self.path, meta.line, meta.column, meta.end_line, meta.end_column)

    def _tok(self, tok: Token) -> Span:
        # a token lark's lexer made always has its position (None only for tokens built by hand)
        return Span(self.path, tok.line or 0, tok.column or 0, tok.end_line or 0, tok.end_column or 0)

    def start(self, meta, items):
        return [i for i in items if i is not None]

    def include(self, meta, c):
        return _RawItem("include", (c[0][1:-1],), self._span(meta))

    def param_decl(self, meta, c):
        return _RawItem("param", (str(c[0]), c[1]), self._span(meta))

    def start_decl(self, meta, c):
        return _RawItem("start", (str(c[0]), c[1] or ()), self._span(meta))

    def rule(self, meta, c):
        head, guards, *alts = c
        return _RawRule(str(head), guards or (), tuple(alts), self._tok(head))

    def extend(self, meta, c):
        head, *alts = c
        return _RawRule(str(head), (), tuple(alts), self._tok(head), "extend")

    def override(self, meta, c):
        head, guards, *alts = c
        return _RawRule(str(head), guards or (), tuple(alts), self._tok(head), "override")

    def guards(self, meta, c):
        return tuple(c)

    def guard_eq(self, meta, c):
        return Guard(str(c[0]), frozenset([c[1]]), self._span(meta))

    def guard_in(self, meta, c):
        return Guard(str(c[0]), frozenset(c[1]), self._span(meta))

    def settings(self, meta, c):
        return tuple(c)

    def setting(self, meta, c):
        return (str(c[0]), c[1], self._span(meta))

    def alt(self, meta, c):
        label, *body, prob = c
        return _RawAlt(str(label) if label else None, tuple(body), prob, self._span(meta))

    def symbol(self, meta, c):
        return ("ref", str(c[0]), c[1] or (), self._tok(c[0]))

    def op(self, meta, c):
        fixed, choices = [], []
        for kind, names, value in c[1] or ():
            if kind == "eq":
                fixed.append((names[0], value))
            else:
                choices.append((names, value))
        return _RawOp(str(c[0]), tuple(fixed), tuple(choices), self._span(meta))

    def op_args(self, meta, c):
        return tuple(c)

    def arg_eq(self, meta, c):
        return ("eq", (str(c[0]),), c[1])

    def arg_in(self, meta, c):
        return ("in", (str(c[0]),), tuple(c[1]))

    def arg_joint(self, meta, c):
        *names, values = c
        names = tuple(str(n) for n in names)
        for v in values:
            if not isinstance(v, tuple) or len(v) != len(names):
                raise _BadValue(f"each value for ({', '.join(names)}) must be a {len(names)}-tuple, "
                                f"not {show_value(v)}", self._span(meta))
        return ("in", names, tuple(values))

    def branches(self, meta, c):
        return Branches(tuple(c), self._span(meta))

    def arm(self, meta, c):
        guards, (items, repeated) = c
        return Arm(guards or (), items, repeated, self._span(meta))

    def independent(self, meta, c):
        return tuple(Ref(str(t), (), self._tok(t)) for t in c), False

    def repeated(self, meta, c):
        return (Ref(str(c[0]), (), self._tok(c[0])),), True

    def value_set(self, meta, c):
        return tuple(c)

    def number(self, meta, c):
        text = str(c[0])
        if any(ch in text for ch in ".eE"):
            raise _BadValue(f"expected an integer, not {text}", self._tok(c[0]))
        return int(text)

    def true(self, meta, c):
        return True

    def false(self, meta, c):
        return False

    def name(self, meta, c):
        return str(c[0])

    def tuple(self, meta, c):
        return tuple(self.number(meta, [t]) for t in c)

    # probabilities: plain arithmetic, evaluated here (never by Python's eval)
    def num(self, meta, c):
        return float(c[0])

    def add(self, meta, c):
        return c[0] + c[1]

    def sub(self, meta, c):
        return c[0] - c[1]

    def mul(self, meta, c):
        return c[0] * c[1]

    def div(self, meta, c):
        if c[1] == 0:
            raise _BadValue("division by zero in a probability", self._span(meta))
        return c[0] / c[1]

    def neg(self, meta, c):
        return -c[0]


def _syntax_error(err: UnexpectedInput, path: str) -> Diagnostic:
    line, col = max(err.line, 1), max(err.column, 1)
    if isinstance(err, UnexpectedCharacters):
        msg = f"unexpected character {show_char(err.char)}"
    elif isinstance(err, UnexpectedEOF):
        msg = "unexpected end of file"
    else:
        assert isinstance(err, UnexpectedToken)
        tok = err.token
        found = "end of file" if tok.type == "$END" else (
            "new line" if tok.type in ("_NL",) else f'"{str(tok).strip()}"')
        msg = f"unexpected {found}"
        if tok.type == "_OR" and "\n" in str(tok):
            line, col = tok.end_line, tok.end_column - 1
    expected = sorted({_TERMINALS.get(t, t) for t in getattr(err, "expected", None) or ()
                       if not t.startswith("__")})
    if expected and len(expected) <= 8:
        msg += "; expected " + (expected[0] if len(expected) == 1 else "one of " + ", ".join(expected))
    return Diagnostic(Span(path, line, col), "error", "syntax", msg)


def parse_items(text: str, key: str, diags: list[Diagnostic]) -> list:
    """One file's raw items, includes not yet resolved; on a syntax error none, and its diagnostic
    (without its source line: ``read_ein`` adds every diagnostic's line from the texts read)."""
    try:
        tree = _parser().parse(text)
    except UnexpectedInput as e:
        diags.append(_syntax_error(e, key))
        return []
    try:
        return _ToRaw(key).transform(tree)
    except RecursionError:  # lark's transformer recurses: parentheses nested thousands deep
        diags.append(Diagnostic(Span(key, 1, 1), "error", "syntax", "the file nests parentheses too deeply"))
        return []
    except Exception as e:  # lark wraps transformer errors in VisitError
        inner = getattr(e, "orig_exc", e)
        if isinstance(inner, _BadValue):
            diags.append(Diagnostic(inner.span, "error", "syntax", inner.message))
            return []
        raise
