""".ein text -> RuleTable: parse with grammar/ein.lark, give meaning with one Transformer,
resolve includes, expand operation variants and assign probabilities.

Semantic checks over the finished table live in einc/checks.py; ``compile_ein`` runs both
and raises one ``EinCheckError`` holding every error found.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

from lark import Lark, Token, Transformer, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from .errors import Diagnostic, EinCheckError, Span, show_char
from .ops import BUILTIN, MODES, Library, Value, show_value
from .table import Alternative, Arm, Branches, Guard, OpCall, Ref, Rule, RuleTable, Start

PROB_TOLERANCE = 1e-9

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
    from .grammar import EIN_LARK

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


# ---------------------------------------------------------------- reading files


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


def _syntax_error(err: UnexpectedInput, path: str, sources: _Sources) -> Diagnostic:
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
    return sources.diag(Span(path, line, col), "syntax", msg)


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
    from .grammar import bundled

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
    """One file's raw items, includes not yet resolved."""
    text = text.removeprefix("\ufeff")  # a UTF-8 byte-order mark is no part of the text
    sources.text[key] = text
    sources.read.add(_norm(key))
    try:
        tree = _parser().parse(text)
    except UnexpectedInput as e:
        diags.append(_syntax_error(e, key, sources))
        return []
    try:
        return _ToRaw(key).transform(tree)
    except RecursionError:  # lark's transformer recurses: parentheses nested thousands deep
        diags.append(sources.diag(Span(key, 1, 1), "syntax", "the file nests parentheses too deeply"))
        return []
    except Exception as e:  # lark wraps transformer errors in VisitError
        inner = getattr(e, "orig_exc", e)
        if isinstance(inner, _BadValue):
            diags.append(sources.diag(inner.span, "syntax", inner.message))
            return []
        raise


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


# ---------------------------------------------------------------- building the table


def _build(items: list, path: str, library: Library, sources: _Sources,
           diags: list[Diagnostic], source: str) -> RuleTable | None:
    params: dict[str, frozenset[Value]] = {}
    start: Start | None = None
    for item in items:
        if isinstance(item, _RawItem) and item.kind == "param":
            name, values = item.data
            if name in ("m", "b") or name in params:
                diags.append(sources.diag(item.span, "duplicate-param",
                                          f'parameter "{name}" is already ' +
                                          ("built in" if name in ("m", "b") else "declared")))
            else:
                params[name] = frozenset(values)
    for item in items:
        if isinstance(item, _RawItem) and item.kind == "start":
            if start is not None:
                diags.append(sources.diag(item.span, "bad-start", "a second start declaration"))
                continue
            start = _start(item, params, sources, diags)
    if start is None and not any(d.code == "syntax" for d in diags):
        diags.append(Diagnostic(Span(path, 1, 1), "error", "bad-start",
                                'no start declaration; add e.g. "start S(shape=(3, 32, 32))"'))

    rules: dict[str, list[Rule]] = {}
    for raw in _composed([i for i in items if isinstance(i, _RawRule)], sources, diags):
        for g in raw.guards:
            _check_guard(g, params, sources, diags)
        alts = _alternatives(raw, params, library, sources, diags)
        rules.setdefault(raw.head, []).append(Rule(raw.head, raw.guards, alts, raw.span))
    if start is None:
        return None
    return RuleTable(path, start, params, {h: tuple(r) for h, r in rules.items()}, library, source)


def _composed(raws: list[_RawRule], sources: _Sources, diags) -> list[_RawRule]:
    """The rules in reading order with ``extend`` and ``override`` applied.

    ``extend X -> a | b`` appends a and b to every rule of X read so far, as if written at
    their ends (so probabilities follow the usual rules over the joined list); ``override X ->``
    drops every rule of X read so far and stands in their place. Either names an X that
    has a rule above it (an included file counts), else it is an ``undefined-symbol`` error.
    """
    out: dict[str, list[_RawRule]] = {}
    for raw in raws:
        if raw.kind == "rule":
            out.setdefault(raw.head, []).append(raw)
            continue
        if not out.get(raw.head):
            later = any(r.head == raw.head and r.kind == "rule" for r in raws)
            hint = "; it has rules only below this line" if later else _suggest(raw.head, [h for h in out if out[h]])
            diags.append(sources.diag(raw.span, "undefined-symbol",
                                      f'{raw.kind} of "{raw.head}", which has no rule above it{hint}'))
            continue
        if raw.kind == "override":
            out[raw.head] = [replace(raw, kind="rule")]
        else:
            out[raw.head] = [replace(r, alts=r.alts + raw.alts) for r in out[raw.head]]
    return [r for rs in out.values() for r in rs]


def _start(item: _RawItem, params, sources: _Sources, diags) -> Start:
    symbol, settings = item.data
    shape, mode, values = None, None, {}
    for name, value, span in settings:
        if name == "shape":
            if not (isinstance(value, tuple) and len(value) in (2, 3) and all(v >= 1 for v in value)):
                diags.append(sources.diag(span, "bad-start", "shape is (C, H, W) or (S, D) of positive sizes"))
            else:
                shape = value
        elif name == "m":
            if value not in MODES:
                diags.append(sources.diag(span, "bad-start", f"m is Im or Col, not {show_value(value)}"))
            else:
                mode = value
        elif name in params:
            if not _member(value, params[name]):
                diags.append(sources.diag(span, "bad-start", f'{name}={show_value(value)} is not a declared value'))
            values[name] = value
        else:
            diags.append(sources.diag(span, "bad-start", f'unknown start parameter "{name}"; '
                                      "use shape, m or a declared param"))
    if shape is not None:
        implied = "Im" if len(shape) == 3 else "Col"
        if mode not in (None, implied):
            diags.append(sources.diag(item.span, "bad-start",
                                      f"shape {show_value(shape)} is {implied} mode, not {mode}"))
        mode = implied
    for name in params:
        if name not in values:
            diags.append(sources.diag(item.span, "bad-start", f'start gives no value to parameter "{name}"'))
    return Start(symbol, shape, mode, tuple(sorted(values.items())), item.span)


def _member(value: Value, domain) -> bool:
    """``value in domain`` without Python's true == 1: a declared {0, 1} does not take true."""
    return any(value == d and type(value) is type(d) for d in domain)


def _check_guard(g: Guard, params, sources: _Sources, diags) -> None:
    if g.param == "m":
        bad = [v for v in g.values if v not in MODES]
    elif g.param == "b":
        bad = [v for v in g.values if not (type(v) is int and v >= 1)]
    elif g.param in params:
        bad = [v for v in g.values if not _member(v, params[g.param])]
    else:
        diags.append(sources.diag(g.span, "bad-guard", f'guard on unknown parameter "{g.param}"; '
                                  "guards read m, b or a declared param"))
        return
    for v in bad:
        diags.append(sources.diag(g.span, "bad-guard", f"{g.param} never takes the value {show_value(v)}"))


def implied_label(head: str) -> str:
    """The label of an unlabelled alternative that bracket notation cannot elide: the
    nonterminal's name in lowercase (``Conv -> im2col(...) linear(...) col2im`` is written
    ``conv(im2col(...), linear(...), col2im)``)."""
    return head.lower()


def _needs_label(body: tuple) -> bool:
    """Only a single operation or nonterminal can go unwritten in bracket notation."""
    return len(body) > 1 or isinstance(body[0], Branches)


def _labels(rule: _RawRule, sources: _Sources, diags) -> list[str | None]:
    """Each alternative's label, explicit or implied; two alike in one rule is an error."""
    out: list[str | None] = []
    first: dict[str, _RawAlt] = {}
    for alt in rule.alts:
        label = alt.label or (implied_label(rule.head) if _needs_label(alt.body) else None)
        out.append(label)
        if label is None:
            continue
        if label not in first:
            first[label] = alt
            continue
        if _variants_of_one_body(first[label].body, alt.body):
            continue  # strings tell them apart by the operations' arguments (einc fit writes these)
        if alt.label and first[label].label:
            msg = (f'label "{label}" names two alternatives of "{rule.head}" (the first at line '
                   f'{first[label].span.line}); bracket notation could not tell them apart: rename one')
        else:
            msg = (f'two alternatives of "{rule.head}" are written "{label}(...)" (the first at line '
                   f'{first[label].span.line}): an alternative of several elements without a label '
                   "takes its nonterminal's name in lowercase; give them distinct labels")
        diags.append(sources.diag(alt.span, "duplicate-label", msg))
    return out


def _variants_of_one_body(a: tuple, b: tuple) -> bool:
    """Whether two bodies differ at most in their operations' arguments. A string then names
    one of them: the parser tells them apart by the arguments, and equal bodies give equal trees."""
    def shape(el):
        if isinstance(el, _RawOp):
            return ("op", el.name)
        if isinstance(el, tuple):  # ("ref", name, settings, span)
            return ("ref", el[1], tuple((n, v) for n, v, _ in el[2]))
        return ("branches", el)
    return len(a) == len(b) and all(shape(x) == shape(y) for x, y in zip(a, b, strict=True))


def _alternatives(rule: _RawRule, params, library: Library, sources: _Sources, diags) -> tuple[Alternative, ...]:
    """Expand op variants and give every alternative its probability and label."""
    labels = dict(zip(map(id, rule.alts), _labels(rule, sources, diags), strict=True))
    expanded: list[tuple[_RawAlt, tuple]] = []  # (raw alt, body) per variant
    for alt in rule.alts:
        bodies: list[list] = [[]]
        for el in alt.body:
            if isinstance(el, _RawOp):
                variants = _op_variants(el, library, sources, diags)
                bodies = [b + [v] for b in bodies for v in variants]
            elif isinstance(el, tuple) and el[0] == "ref":
                _, name, sets, span = el
                bodies = [b + [Ref(name, _sets(sets, params, sources, diags), span)] for b in bodies]
            else:
                assert isinstance(el, Branches)
                for arm in el.arms:
                    for g in arm.guards:
                        _check_guard(g, params, sources, diags)
                bodies = [b + [el] for b in bodies]
        expanded.extend((alt, tuple(b)) for b in bodies)

    out_of_range = False
    for alt in rule.alts:
        if alt.prob is not None and not (0 <= alt.prob <= 1):
            out_of_range = True
            diags.append(sources.diag(alt.span, "bad-probability", f"probability {alt.prob:g} is outside [0, 1]"))
    counts = {id(a): sum(1 for x, _ in expanded if x is a) for a in rule.alts}
    given = sum(a.prob for a in rule.alts if a.prob is not None and counts[id(a)])
    free = sum(counts[id(a)] for a in rule.alts if a.prob is None)
    share = (1 - given) / free if free else 0.0
    where = rule.span
    head = rule.head + ("(" + ", ".join(_show_guard(g) for g in rule.guards) + ")" if rule.guards else "")
    if out_of_range:
        pass  # the sums would only echo it
    elif free == 0 and abs(given - 1) > PROB_TOLERANCE and expanded:
        diags.append(sources.diag(where, "bad-probability", f'probabilities of "{head}" sum to {given:g}, not 1'))
    elif free and share <= PROB_TOLERANCE:
        diags.append(sources.diag(where, "bad-probability",
                                  f'probabilities of "{head}" sum to {given:g}, leaving nothing for '
                                  f"{free} alternative(s) without one"))
    out = []
    for alt, body in expanded:
        p = alt.prob / counts[id(alt)] if alt.prob is not None else share
        out.append(Alternative(rule.head, labels[id(alt)], body, p, alt.span))
    return tuple(out)


def _show_guard(g: Guard) -> str:
    if len(g.values) == 1:
        return f"{g.param}={show_value(next(iter(g.values)))}"
    return f"{g.param} in {{{', '.join(sorted(map(show_value, g.values)))}}}"


def _sets(sets, params, sources: _Sources, diags) -> tuple[tuple[str, Value], ...]:
    out: dict[str, Value] = {}
    for name, value, span in sets:
        if name not in params:
            diags.append(sources.diag(span, "bad-guard", f'"{name}" is not a declared param; '
                                      "only declared params can be set"))
        elif not _member(value, params[name]):
            diags.append(sources.diag(span, "bad-guard", f"{name} never takes the value {show_value(value)}"))
        elif name in out:
            diags.append(sources.diag(span, "duplicate-param", f'"{name}" is set twice'))
        else:
            out[name] = value
    return tuple(sorted(out.items()))


def _op_variants(raw: _RawOp, library: Library, sources: _Sources, diags) -> list[OpCall]:
    if raw.name not in library:
        diags.append(sources.diag(raw.span, "unknown-op", f'unknown operation "{raw.name}"'
                                  + _suggest(raw.name, library)))
        return [OpCall(raw.name, (), raw.span)]
    op = library[raw.name]
    seen: set[str] = set()
    for names in [(n,) for n, _ in raw.fixed] + [n for n, _ in raw.choices]:
        for n in names:
            if n in seen:
                diags.append(sources.diag(raw.span, "duplicate-param",
                                          f'"{raw.name}" hyperparameter "{n}" is given twice'))
            seen.add(n)
    variants = raw.variants()
    reported: set[str] = set()
    for args in variants:
        for problem in op.check_args(dict(args)):
            if problem not in reported:
                reported.add(problem)
                diags.append(sources.diag(raw.span, "bad-hyperparameter", problem))
    return [OpCall(raw.name, args, raw.span) for args in variants]


def _suggest(name: str, names) -> str:
    import difflib

    close = difflib.get_close_matches(name, list(names), n=1)
    return f'; did you mean "{close[0]}"?' if close else ""


# ---------------------------------------------------------------- entry points


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
    from .checks import run_checks

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
    from .grammar import bundled

    try:
        return bundled(str(path))
    except FileNotFoundError:
        return p
