"""Bracket notation <-> derivation trees: one parser, one printer, for any .ein grammar.

Parsing has two stages. Syntax: text -> generic items (``Call``, ``Seq``) by a hand-written
tokenizer and recursive-descent parser (the specification is grammar/arch.lark; tests check
the two agree). Meaning: items -> ``Tree`` by resolving every name against the grammar's rules
in the finite state (mode, branching factor, declared params) reached at that point, so every
expansion is a rule of the grammar in the right parameter state. Shapes are checked later by
einc.infer.

Both stages and the printer run without Python recursion (einc.tree.deep and explicit
stacks), so any tree the sampler's budget admits prints and parses back, however deep.

Canonical printing (``show``): labelled alternatives as ``label(child, ...)``; unlabelled
single-element alternatives are elided; a right-nested chain of one binary label whose body
is ``X X`` is written flat (``sequential(a, b, c)`` is ``sequential(a, sequential(b, c))``);
independent branches as ``[a, b]``, one repeated subtree as ``[a]*4``; op arguments in the
op's own order.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from .errors import ArchError, Span, show_char
from .ops import Value, show_value
from .pcfg import finite_effect
from .table import Alternative, Branches, OpCall, Ref, RuleTable, merge_params
from .tree import Expansion, Fork, Leaf, Node, deep

MAX_NESTING = 250_000
"""Deepest nesting of brackets parsed: above twice the largest ``Budget.max_depth`` (a tree's
string nests at most one level per nonterminal or branch list), a bound on memory only."""

# ---------------------------------------------------------------- syntax


@dataclass(frozen=True, slots=True)
class Call:
    name: str
    kwargs: tuple[tuple[str, Value], ...]
    items: tuple["Item", ...]
    line: int
    col: int
    has_parens: bool = False


@dataclass(frozen=True, slots=True)
class Seq:
    items: tuple["Item", ...]
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
        kind = m.lastgroup
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


_SHOW = {"name": "a name", "int": "a number", "end": "the end", "true": '"true"', "false": '"false"'}


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
            items = [(yield self.item(depth + 1))]
            while self.toks[self.i][0] == ",":
                self.i += 1
                items.append((yield self.item(depth + 1)))
            self.take("]", '"," or "]"')
            repeat = None
            if self.toks[self.i][0] == "*":
                self.i += 1
                repeat = int(self.take("int", "a number of copies")[1])
            return Seq(tuple(items), repeat, line, col)
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
    p = _Parser(_without_bom(text))
    item = deep(p.item(0))
    p.take("end", "the end of the string")
    return item


def _without_bom(text: str) -> str:
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


# ---------------------------------------------------------------- meaning


FState = tuple  # (m, b, params): the finite part of a state


class _Resolve:
    """Items -> Tree against a RuleTable, threading the finite state."""

    def __init__(self, table: RuleTable, text: str):
        self.table, self.text = table, text

    def error(self, item: Item, message: str, path) -> ArchError:
        """``path`` is a cons list ``(parent, index)`` (None at the root): extending it is O(1)."""
        flat: list[int] = []
        while path is not None:
            path, i = path
            flat.append(i)
        return ArchError(message, self.text, item.line, item.col, tuple(reversed(flat)))

    def span(self, item: Item) -> Span:
        return Span("<arch>", item.line, item.col)

    # nonterminal, labelled, body and fork are generators run by einc.tree.deep:
    # ``x = yield self.f(...)`` is a recursive call.

    def nonterminal(self, item: Item, head: str, fs: FState, path, chain: frozenset = frozenset()):
        """(Expansion, state after it); ``chain`` holds the elided nonterminals above, in their states."""
        env = {"m": fs[0], "b": fs[1], **dict(fs[2])}
        rule = self.table.rule_for(head, env)
        if rule is None:
            state = ", ".join(f"{k}={'mixed' if v is None else show_value(v)}" for k, v in env.items())
            raise self.error(item, f'no rule of "{head}" applies with {state}', path)
        if isinstance(item, Call) and any(a.label == item.name for a in rule.alternatives):
            return (yield self.labelled(item, head, rule.alternatives, fs, path))
        if not isinstance(item, Call) or item.name not in self.names(head, rule):
            raise self.error(item, self._expected(item, head, rule), path)
        first_error = None
        for alt in rule.alternatives:
            if alt.label is not None or len(alt.body) != 1:
                continue
            el = alt.body[0]
            try:
                if isinstance(el, OpCall):
                    if item.name == el.op:
                        leaf, fs2 = self.leaf(item, el, fs, (path, 0))
                        return Expansion(head, None, (leaf,), self.span(item)), fs2
                elif isinstance(el, Ref) and (el.name, _set(fs, el.sets)) not in chain:  # a checked grammar has no loop
                    child, out = yield self.nonterminal(item, el.name, _set(fs, el.sets), (path, 0),
                                                        chain | {(head, fs)})
                    return Expansion(head, None, (child,), self.span(item)), (out[0], out[1], fs[2])
            except ArchError as e:
                first_error = first_error or e
        raise first_error or self.error(item, self._expected(item, head, rule), path)

    def names(self, head: str, rule) -> frozenset[str]:
        """Every name that can stand for ``head`` under ``rule``: labels and elided ops."""
        key = ("arch-names", id(rule))
        cache = self.table.cache
        if key not in cache:
            cache[key] = frozenset(self._names(head, rule.alternatives, set()))
        return cache[key]

    def _expected(self, item: Item, head: str, rule) -> str:
        names = sorted(self.names(head, rule))
        what = f'"{item.name}"' if isinstance(item, Call) else "a branch list"
        return f'{what} cannot stand for "{head}" here; expected one of ' + ", ".join(names)

    def _names(self, head, alts, seen) -> set[str]:
        out = set()
        for a in alts:
            if a.label:
                out.add(a.label)
            elif len(a.body) == 1 and isinstance(a.body[0], OpCall):
                out.add(a.body[0].op)
            elif len(a.body) == 1 and isinstance(a.body[0], Ref) and a.body[0].name not in seen:
                seen.add(a.body[0].name)
                for r in self.table.rules.get(a.body[0].name, ()):
                    out |= self._names(a.body[0].name, r.alternatives, seen)
        return out

    def labelled(self, item: Call, head: str, alts, fs: FState, path):
        if item.kwargs:
            raise self.error(item, f'"{item.name}" is a module label and takes no "{item.kwargs[0][0]}="', path)
        first_error = None
        for alt in alts:
            if alt.label != item.name:
                continue
            items = item.items
            body = alt.body
            if len(items) > len(body) == 2 and all(isinstance(e, Ref) and e.name == body[0].name for e in body):
                # flat chain: label(a, b, c) is label(a, label(b, c)) in the body's nonterminal;
                # the nested calls are built once, from the end (slicing per level is quadratic)
                rest = Call(item.name, (), items[-2:], items[-2].line, items[-2].col, True)
                for k in range(len(items) - 3, 0, -1):
                    rest = Call(item.name, (), (items[k], rest), items[k].line, items[k].col, True)
                items = (items[0], rest)
            if len(items) != len(body):
                first_error = first_error or self.error(
                    item, f'"{item.name}" has {len(body)} parts, not {len(items)}', path)
                continue
            try:
                return (yield self.body(item, head, alt, items, fs, path))
            except ArchError as e:
                first_error = first_error or e
        assert first_error is not None
        raise first_error

    def body(self, item: Item, head: str, alt: Alternative, items, fs: FState, path):
        children: list[Node] = []
        m, b = fs[0], fs[1]
        for i, (el, it) in enumerate(zip(alt.body, items)):
            cur = (m, b, fs[2])
            if isinstance(el, OpCall):
                leaf, (m, b, _) = self.leaf(it, el, cur, (path, i))
                children.append(leaf)
            elif isinstance(el, Ref):
                child, (m, b, _) = yield self.nonterminal(it, el.name, _set(cur, el.sets), (path, i))
                children.append(child)
            else:
                fork, (m, b, _) = yield self.fork(it, el, cur, (path, i))
                children.append(fork)
        return Expansion(head, alt.label, tuple(children), self.span(item)), (m, b, fs[2])

    def leaf(self, item: Item, el: OpCall, fs: FState, path) -> tuple[Leaf, FState]:
        if not isinstance(item, Call) or item.name != el.op:
            got = f'"{item.name}"' if isinstance(item, Call) else "a branch list"
            raise self.error(item, f'expected operation "{el.op}" here, not {got}', path)
        if item.items:
            raise self.error(item, f'operation "{el.op}" takes hyperparameters (name=value), not modules', path)
        given = dict(item.kwargs)
        if len(given) != len(item.kwargs):
            raise self.error(item, f'a hyperparameter of "{el.op}" is given twice', path)
        if tuple(sorted(given.items())) != el.args:
            raise self.error(item, f'{_show_op(item.name, item.kwargs)} is not a variant the grammar allows here', path)
        eff = finite_effect(self.table, el, fs[0], fs[1])
        if eff is None:
            raise self.error(item, f'"{el.op}" does not apply in mode {fs[0] or "mixed"} with b={fs[1]}', path)
        return Leaf(el.op, el.args, self.span(item)), (eff[0], eff[1], fs[2])

    def fork(self, item: Item, el: Branches, fs: FState, path):
        m, b, params = fs
        arm = el.arm_for({"m": m, "b": b, **dict(params)})
        if not isinstance(item, Seq):
            raise self.error(item, f"expected a branch list [...] for {b} branches here", path)
        if arm is None or m is None:
            raise self.error(item, f"no branch arm of the grammar applies with b={b}", path)
        if arm.repeated:
            if item.repeat is None or len(item.items) != 1:
                raise self.error(item, f"the grammar repeats one subtree here: write [x]*{b}", path)
            if item.repeat != b:
                raise self.error(item, f"[...]*{item.repeat} after a {b}-way branch; write *{b}", path)
            child, out = yield self.nonterminal(item.items[0], arm.items[0].name, (m, 1, params), (path, 0))
            if out[1] != 1:
                raise self.error(item.items[0], "a branch must end in one feature", (path, 0))
            return Fork((child,), True, b, self.span(item)), (out[0], b, params)
        if item.repeat is not None:
            raise self.error(item, f"the grammar derives {b} independent branches here: write [{', '.join(['x'] * b)}]",
                             path)
        if len(item.items) != b:
            raise self.error(item, f"{len(item.items)} branch{'es' if len(item.items) != 1 else ''} after a {b}-way branch", path)
        kids, modes = [], set()
        for i, (ref, it) in enumerate(zip(arm.items, item.items)):
            child, out = yield self.nonterminal(it, ref.name, _set((m, 1, params), ref.sets), (path, i))
            if out[1] != 1:
                raise self.error(it, "a branch must end in one feature", (path, i))
            kids.append(child)
            modes.add(out[0])
        return Fork(tuple(kids), False, b, self.span(item)), (modes.pop() if len(modes) == 1 else None, b, params)


def _set(fs: FState, sets) -> FState:
    return (fs[0], fs[1], merge_params(fs[2], sets)) if sets else fs


def _show_op(name: str, kwargs) -> str:
    return name + ("(" + ", ".join(f"{k}={show_value(v)}" for k, v in kwargs) + ")" if kwargs else "")


def parse(text: str, table: RuleTable, mode: str | None = None) -> Expansion:
    """Parse an architecture string as a derivation of ``table`` from its start symbol.

    ``mode`` is the input's mode (Im/Col); by default the start declaration's.
    Raises ``ArchError`` with line:col, a caret line and the node's path.
    """
    return _parse_cached(text, table, mode or table.start.mode)


@lru_cache(maxsize=4096)
def _parse_cached(text: str, table: RuleTable, mode: str) -> Expansion:
    text = _without_bom(text)
    item = parse_syntax(text)
    tree, _ = deep(_Resolve(table, text).nonterminal(item, table.start.symbol, (mode, 1, table.start.params), None))
    return tree


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
                parts += [", "] * bool(i) + [(c, node.label if last and _flattens(node, c) else None)]
            if flat_label is None:
                parts.append(")")
        todo.extend(reversed(parts))
    return "".join(out)


def _flattens(parent: Expansion, child: Node) -> bool:
    return (len(parent.children) == 2 and isinstance(child, Expansion) and child.label == parent.label
            and parent.label is not None and len(child.children) == 2
            and isinstance(parent.children[0], Expansion) and parent.children[0].head == child.head)


_ORDERS: dict[str, dict[str, int]] = {}


def _arg_order(op: str) -> dict[str, int]:
    if op not in _ORDERS:
        from .ops import BUILTIN

        o = BUILTIN.get(op)
        _ORDERS[op] = {p.name: i for i, p in enumerate(o.params)} if o else {}
    return _ORDERS[op]
