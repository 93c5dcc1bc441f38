"""Raw items -> RuleTable: params and start, guards, ``extend``/``override``, labels,
operation variants and probabilities, each problem a located diagnostic.

Semantic checks over the finished table (reachability, modes, PCFG consistency) are
einc/checks.py's.
"""

from __future__ import annotations

from dataclasses import replace

from ..errors import Diagnostic, Span
from ..ops import MODES, Library, Value, show_value
from ..table import Alternative, Branches, Guard, OpCall, Ref, Rule, RuleTable, Start
from .includes import _Sources
from .syntax import _RawAlt, _RawItem, _RawOp, _RawRule

PROB_TOLERANCE = 1e-9


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
