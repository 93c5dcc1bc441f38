"""A bracket string -> a derivation tree of a grammar: every name resolved against the rules.

The text is read by einc.notation (syntax only); here each item is resolved against the
grammar's rules in the finite state (mode, branching factor, declared params) reached at that
point, so every expansion is a rule of the grammar in the right parameter state and every
operation's finite effect (``Op.finite_effect``, the one the sampler keeps to) applies.
Shapes are checked later by einc.infer. The resolution runs without Python recursion
(einc.tree.deep), at any depth.
"""

from __future__ import annotations

from functools import lru_cache

from .errors import ArchError, Span
from .notation import Call, Item, Seq, parse_syntax, strip_bom
from .ops import show_value
from .table import Alternative, Branches, OpCall, Ref, Rule, RuleTable, merge_params
from .tree import Expansion, Fork, Leaf, Node, deep, gc_paused

__all__ = ["parse"]

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
        rule, labels = self.rule(head, fs)
        if rule is None:
            env = {"m": fs[0], "b": fs[1], **dict(fs[2])}
            state = ", ".join(f"{k}={'mixed' if v is None else show_value(v)}" for k, v in env.items())
            raise self.error(item, f'no rule of "{head}" applies with {state}', path)
        if isinstance(item, Call) and item.name in labels:
            return (yield self.labelled(item, head, rule.alternatives, fs, path))
        if not isinstance(item, Call) or item.name not in self.names(head, rule):
            raise self.error(item, self._expected(item, head, rule), path)
        first_error: ArchError | OpCall | None = None  # an OpCall: the error its leaf would raise, made if needed
        args = tuple(sorted(dict(item.kwargs).items())) if item.kwargs else ()
        for el in self.elided(rule, item.name):
            try:
                if isinstance(el, OpCall):
                    if el.args != args:  # another variant: an error (O(text) to make) only if none fits
                        first_error = first_error or el
                        continue
                    leaf, fs2 = self.leaf(item, el, fs, (path, 0))
                    return Expansion(head, None, (leaf,), self.span(item)), fs2
                if (el.name, _set(fs, el.sets)) not in chain:  # a checked grammar has no loop
                    child, out = yield self.nonterminal(item, el.name, _set(fs, el.sets), (path, 0),
                                                        chain | {(head, fs)})
                    return Expansion(head, None, (child,), self.span(item)), (out[0], out[1], fs[2])
            except ArchError as e:
                first_error = first_error or e
        if isinstance(first_error, OpCall):
            first_error = self._leaf_error(item, first_error, fs, path)
        raise first_error or self.error(item, self._expected(item, head, rule), path)

    def _leaf_error(self, item: Item, el: OpCall, fs: FState, path) -> ArchError:
        """The error ``leaf`` raises for a variant that does not fit ``item``."""
        try:
            self.leaf(item, el, fs, (path, 0))
        except ArchError as e:
            return e
        raise AssertionError(f"{el.op}{el.args} made a leaf of another variant")

    def rule(self, head: str, fs: FState) -> tuple[Rule | None, frozenset[str]]:
        """The rule of ``head`` in state ``fs`` and its alternatives' labels (cached per grammar: a
        parse asks once per node, and a state's guards are evaluated once)."""
        key = ("arch-rule", head, fs)
        cache = self.table.cache
        if key not in cache:
            rule = self.table.rule_for(head, {"m": fs[0], "b": fs[1], **dict(fs[2])})
            cache[key] = rule, frozenset(a.label for a in rule.alternatives if a.label) if rule else frozenset()
        return cache[key]

    def elided(self, rule: Rule, name: str) -> tuple[OpCall | Ref, ...]:
        """The bodies of ``rule``'s unlabelled one-element alternatives that may stand for ``name``,
        in order: the op ``name`` itself, and every nonterminal (cached: a parse asks once per node)."""
        key = ("arch-elided", id(rule), name)
        cache = self.table.cache
        if key not in cache:
            cache[key] = tuple(a.body[0] for a in rule.alternatives if a.label is None and len(a.body) == 1 and (
                isinstance(a.body[0], Ref) or isinstance(a.body[0], OpCall) and a.body[0].op == name))
        return cache[key]

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
        for i, (el, it) in enumerate(zip(alt.body, items, strict=True)):
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
        op = self.table.library.get(el.op)
        eff = None if op is None else op.finite_effect(fs[0], fs[1], el.args)
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
            plural = "es" if len(item.items) != 1 else ""
            raise self.error(item, f"{len(item.items)} branch{plural} after a {b}-way branch", path)
        kids, modes = [], set()
        for i, (ref, it) in enumerate(zip(arm.items, item.items, strict=False)):
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
    text = strip_bom(text)
    with gc_paused():
        item = parse_syntax(text)
        tree, _ = deep(_Resolve(table, text).nonterminal(item, table.start.symbol, (mode, 1, table.start.params),
                                                         None))
    return tree


