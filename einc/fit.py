"""Rule probabilities learned from results: count, fit, keep consistent, write a .ein.

Plain data in, plain data out: a list of architecture strings (the best ones of a search)
and a grammar's text. ``einc fit`` reads the journal; this module never touches the runtime.

1. **Count.** Every string is parsed against the grammar, and each expansion is attributed
   to the alternative it used, state by state: the state is the finite one of the PCFG
   analysis (einc.pcfg), ``(nonterminal, m, b, declared params)``. A repeated subtree
   (``[x]*4``) is one derivation and counts once.
2. **Fit.** The ``@`` probabilities of a .ein file belong to the alternatives of a *rule*,
   and one rule may serve several states (einspace's ``M`` serves ``m=Im`` and ``m=Col``).
   Counts are therefore pooled per rule: the states a grammar's author separated by guards
   (``B(m=Im)``, ``A(b=4)``) get separate fits, the states one rule serves share one.
   Within a rule, the posterior mean under a Dirichlet prior of strength S centred on the
   grammar's own probabilities: ``p_i = (n_i + S * q_i) / (N + S)``.
3. **Consistency.** If the fitted grammar's spectral radius rho is >= ``max_rho`` (0.99),
   the probabilities are shrunk towards the prior, ``(1 - t) * fit + t * prior``, with the
   smallest t (bisection) that brings rho to ``max_rho`` or below; with a prior whose own rho
   is above ``max_rho``, t = 1 (the prior). The result says how far it shrank.
4. **Write.** The original text with new ``@`` probabilities, comments and layout kept. An
   alternative with op variants (``linear(d in {16, ..., 2048})``) carries one ``@`` shared
   equally by its variants, so when the fit tells the variants apart it is written as one
   alternative per variant (``linear(d=16) @ ... | linear(d=32) @ ...``), on continuation
   lines. Probabilities are printed to 4 significant digits; in each rule the largest one is
   the exact remainder, so every rule sums to 1.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal

from .derivation import parse
from .errors import ArchError, EinError
from .ops import BUILTIN, Library, show_value
from .pcfg import finite_effect, radius
from .table import Alternative, Branches, OpCall, Ref, Rule, RuleTable, merge_params
from .tree import Expansion, Fork, Leaf

StateKey = tuple  # (nonterminal, m, b, params), as einc.pcfg defines it
RuleId = tuple  # (nonterminal, index of the rule in table.rules[nonterminal])

MAX_RHO = 0.99
DEFAULT_STRENGTH = 10.0


class FitError(EinError):
    """The fit cannot be made as asked (bad strength, unusable grammar, unparsable string)."""


@dataclass
class Counts:
    """Uses of each alternative: ``by_state[(state key, rule id)][alt index]``."""

    by_state: dict = field(default_factory=dict)
    trees: int = 0

    def add(self, key: StateKey, rid: RuleId, alt: int) -> None:
        row = self.by_state.setdefault((key, rid), {})
        row[alt] = row.get(alt, 0) + 1

    def per_rule(self) -> dict[RuleId, dict[int, int]]:
        """Counts pooled over the states each rule serves."""
        out: dict[RuleId, dict[int, int]] = {}
        for (_, rid), row in self.by_state.items():
            acc = out.setdefault(rid, {})
            for i, n in row.items():
                acc[i] = acc.get(i, 0) + n
        return out

    def states_of(self, rid: RuleId) -> dict[StateKey, int]:
        """The states a rule was used in, with the number of uses in each."""
        return {key: sum(row.values()) for (key, r), row in self.by_state.items() if r == rid}


def count_uses(archs: Iterable[str], table: RuleTable, mode: str | None = None) -> Counts:
    """Count each alternative's uses, state by state, in the derivations of ``archs``.

    Raises ``ArchError`` (located in the string) for a string that is not a derivation.
    """
    counts = Counts()
    for text in archs:
        tree, m = parse_either(text, table, mode)
        try:
            _count(tree, table, m, 1, table.start.params, counts)
        except RecursionError:
            raise FitError("an architecture nests too deeply to count") from None
        counts.trees += 1
    return counts


def parse_either(text: str, table: RuleTable, mode: str | None = None) -> tuple[Expansion, str]:
    """(tree, input mode): with ``mode`` None, the start's mode, else the other one (a search on
    Col-mode data records Col-mode strings); the error is the start mode's."""
    if mode is not None:
        return parse(text.strip(), table, mode), mode
    first = table.start.mode or "Im"
    try:
        return parse(text.strip(), table, first), first
    except ArchError as e:
        other = "Col" if first == "Im" else "Im"
        try:
            return parse(text.strip(), table, other), other
        except ArchError:
            raise e from None


def _count(node: Expansion, table: RuleTable, m, b, params, counts: Counts) -> tuple:
    env = {"m": m, "b": b, **dict(params)}
    rules = table.rules.get(node.head, ())
    ri = next((i for i, r in enumerate(rules) if r.matches(env)), None)
    if ri is None:
        raise FitError(f'no rule of "{node.head}" applies in a state a parsed tree reached')
    rule = rules[ri]
    ai = next((i for i, a in enumerate(rule.alternatives) if _matches(a, node)), None)
    if ai is None:
        raise FitError(f'an expansion of "{node.head}" matches no alternative of its rule')
    counts.add((node.head, m, b, params), (node.head, ri), ai)
    for el, child in zip(rule.alternatives[ai].body, node.children, strict=True):  # _matches checked the length
        if isinstance(el, OpCall):
            eff = finite_effect(table, el, m, b)
            if eff is None:
                raise FitError(f'"{el.op}" does not apply in mode {m or "mixed"} with b={b}')
            m, b = eff
        elif isinstance(el, Ref):
            assert isinstance(child, Expansion)  # _matches: a Ref's node is an expansion of it
            m, b = _count(child, table, m, b, merge_params(params, el.sets), counts)
        else:
            arm = el.arm_for(env | {"m": m, "b": b})
            assert arm is not None and isinstance(child, Fork)
            modes = set()
            for ref, kid in zip(arm.items if not arm.repeated else arm.items[:1], child.children, strict=True):
                assert isinstance(kid, Expansion)  # every branch is a Ref's expansion
                m2, _ = _count(kid, table, m, 1, merge_params(params, ref.sets), counts)
                modes.add(m2)
            m = modes.pop() if len(modes) == 1 else None
    return m, b


def _matches(alt: Alternative, node: Expansion) -> bool:
    if alt.label != node.label or len(alt.body) != len(node.children):
        return False
    for el, child in zip(alt.body, node.children, strict=True):
        if isinstance(el, OpCall):
            if not (isinstance(child, Leaf) and child.op == el.op and child.args == el.args):
                return False
        elif isinstance(el, Ref):
            if not (isinstance(child, Expansion) and child.head == el.name):
                return False
        elif not (isinstance(el, Branches) and isinstance(child, Fork)):
            return False
    return True


# ---------------------------------------------------------------- fitting


def posterior(table: RuleTable, counts: Counts, strength: float) -> dict[RuleId, list[float]]:
    """Posterior-mean probabilities per rule (Dirichlet prior of ``strength`` on the grammar's)."""
    if not (strength > 0 and math.isfinite(strength)):
        raise FitError(f"the prior strength must be a positive number, not {strength}")
    pooled = counts.per_rule()
    out = {}
    for head, rules in table.rules.items():
        for ri, rule in enumerate(rules):
            n = pooled.get((head, ri), {})
            total = sum(n.values())
            out[(head, ri)] = [(n.get(i, 0) + strength * a.prob) / (total + strength)
                               for i, a in enumerate(rule.alternatives)]
    return out


def prior_of(table: RuleTable) -> dict[RuleId, list[float]]:
    return {(h, ri): [a.prob for a in r.alternatives] for h, rs in table.rules.items() for ri, r in enumerate(rs)}


def with_probabilities(table: RuleTable, probs: dict[RuleId, list[float]]) -> RuleTable:
    """A copy of ``table`` with the given probability of every alternative."""
    rules = {}
    for head, rs in table.rules.items():
        rules[head] = tuple(replace(r, alternatives=tuple(replace(a, prob=p) for a, p in
                                                            zip(r.alternatives, probs[(head, ri)], strict=True)))
                            for ri, r in enumerate(rs))
    return RuleTable(table.path, table.start, table.params, rules, table.library, table.source + "\n#fit")


def spectral_radius(table: RuleTable) -> float:
    mode = table.start.mode
    assert mode is not None  # a start without a mode is a bad-start error: no such grammar compiles
    report = table.cache.get("report")  # a compiled grammar's, from its consistency check
    return report.rho if report is not None else radius(table, mode)


def mix(a: dict, b: dict, t: float) -> dict:
    """``(1 - t) * a + t * b``, rule by rule."""
    return {k: [(1 - t) * x + t * y for x, y in zip(a[k], b[k], strict=True)] for k in a}


def shrink(table: RuleTable, fitted: dict, prior: dict, max_rho: float = MAX_RHO,
           steps: int = 12) -> tuple[dict, float, float]:
    """(probabilities, t, rho): the fit itself when its rho <= max_rho, else the smallest
    mixture towards the prior whose rho is <= max_rho (t = 1: the prior, when even it is above)."""
    rho = spectral_radius(with_probabilities(table, fitted))
    if rho <= max_rho:
        return fitted, 0.0, rho
    rho_prior = spectral_radius(with_probabilities(table, prior))
    if rho_prior > max_rho:
        return prior, 1.0, rho_prior
    lo, hi, rho_hi = 0.0, 1.0, rho_prior
    for _ in range(steps):
        mid = (lo + hi) / 2
        r = spectral_radius(with_probabilities(table, mix(fitted, prior, mid)))
        if r <= max_rho:
            hi, rho_hi = mid, r
        else:
            lo = mid
    return mix(fitted, prior, hi), hi, rho_hi


# ---------------------------------------------------------------- writing


def _offsets(text: str) -> list[int]:
    starts = [0]
    for i, ch in enumerate(text):
        if ch == "\n":
            starts.append(i + 1)
    return starts


def _fmt(p: float) -> str:
    s = f"{p:.4g}"
    return "0" if p == 0 else s


def _op_text(call: OpCall, table: RuleTable) -> str:
    if not call.args:
        return call.op
    op = table.library.get(call.op)
    order = {p.name: i for i, p in enumerate(op.params)} if op is not None else {}
    args = sorted(call.args, key=lambda kv: order.get(kv[0], 99))
    return call.op + "(" + ", ".join(f"{k}={show_value(v)}" for k, v in args) + ")"


def render(text: str, path: str, table: RuleTable, probs: dict[RuleId, list[float]],
           header: Sequence[str] = ()) -> str:
    """``text`` (the grammar's own file) with ``probs`` written as its ``@`` probabilities."""
    starts = _offsets(text)

    def off(line: int, col: int) -> int:
        return starts[line - 1] + col - 1

    edits: list[tuple[int, int, str]] = []  # (start, end, replacement)
    for head, rules in table.rules.items():
        for ri, rule in enumerate(rules):
            if not rule.alternatives:
                continue
            if any(a.span is None or a.span.path != path for a in rule.alternatives):
                raise FitError(f'rule "{head}" comes from an included file; fit rewrites one file: '
                               "inline the included files first")
            if all(abs(p - a.prob) <= 1e-12 for p, a in zip(probs[(head, ri)], rule.alternatives, strict=True)):
                continue  # unchanged (no uses): the text stays as written
            edits.extend(_rule_edits(text, off, rule, probs[(head, ri)], table))
    out = text
    for s, e, new in sorted(edits, reverse=True):
        out = out[:s] + new + out[e:]
    lines = "".join("# " + " ".join(h.splitlines()) + "\n" for h in header)
    return lines + ("#\n" if header else "") + out


def _rule_edits(text, off, rule: Rule, probs: list[float], table: RuleTable):
    # group the table's alternatives (one per variant) by the written alternative they come from
    groups: list[list[int]] = []
    for i, a in enumerate(rule.alternatives):
        if groups and rule.alternatives[groups[-1][0]].span == a.span:
            groups[-1].append(i)
        else:
            groups.append([i])
    # the items to write: (group, [alt indices], total probability)
    items = []
    for g in groups:
        ps = [probs[i] for i in g]
        if max(ps) - min(ps) <= 1e-9 * max(1.0, *ps):
            items.append((g, g, sum(ps)))
        else:
            items.extend((g, [i], probs[i]) for i in g)
    written = [Decimal(_fmt(p)) for _, _, p in items]
    big = max(range(len(items)), key=lambda k: items[k][2])
    written[big] = Decimal(1) - sum(w for k, w in enumerate(written) if k != big)
    if written[big] < 0:  # cannot happen with 4 digits unless probabilities are degenerate
        written[big] = Decimal(0)
    first = rule.alternatives[0].span
    assert first is not None  # render refused alternatives without a span
    line_start = text.rfind("\n", 0, off(first.line, first.col)) + 1
    indent = max(off(first.line, first.col) - line_start - 2, 0)  # "| " lines up with the first alternative
    pieces, ranges = [], []
    for g in groups:
        span = rule.alternatives[g[0]].span
        assert span is not None
        s, e = off(span.line, span.col), off(span.end_line, span.end_col)
        alt_text = text[s:e]
        at = alt_text.find("@")
        body = alt_text[:at] if at >= 0 else alt_text + " "
        mine = [k for k, it in enumerate(items) if it[0] is g]
        if len(mine) == 1:
            parts = [f"{body}@ {_num(written[mine[0]])}"]
        else:  # one written alternative per variant
            varying = _varying(rule, g)
            parts = [_variant_text(off, s, body.rstrip(), rule.alternatives[items[k][1][0]], varying, table)
                     + f" @ {_num(written[k])}" for k in mine]
        pieces.append(parts)
        ranges.append((s, e))
    sep = "\n" + " " * indent + "| "
    between = [text[ranges[k][1]:ranges[k + 1][0]] for k in range(len(ranges) - 1)]
    if any(len(p) > 1 for p in pieces) and not any("#" in b for b in between):
        # some alternative is split: the rule is rewritten one alternative per line
        return [(ranges[0][0], ranges[-1][1], sep.join(x for p in pieces for x in p))]
    return [(s, e, sep.join(p)) for (s, e), p in zip(ranges, pieces, strict=True)]


def _num(d: Decimal) -> str:
    s = format(d.normalize(), "f") if d != 0 else "0"
    return s


def _varying(rule: Rule, g: list[int]) -> set[int]:
    """Body positions whose op arguments differ between the variants of one written alternative."""
    first = rule.alternatives[g[0]].body
    return {j for j, el in enumerate(first) if isinstance(el, OpCall)
            and any(rule.alternatives[i].body[j] != el for i in g[1:])}


def _variant_text(off, s: int, body: str, alt: Alternative, varying: set[int], table) -> str:
    subs = []
    for j in sorted(varying):
        el = alt.body[j]
        assert isinstance(el, OpCall) and el.span is not None  # _varying: op positions of a spanned rule
        es, ee = off(el.span.line, el.span.col), off(el.span.end_line, el.span.end_col)
        subs.append((es - s, ee - s, _op_text(el, table)))
    for a, b, new in sorted(subs, reverse=True):
        body = body[:a] + new + body[b:]
    return body


# ---------------------------------------------------------------- the whole fit


@dataclass(frozen=True)
class Fit:
    text: str  # the fitted .ein text
    table: RuleTable  # its compiled, checked table
    counts: Counts
    rho_prior: float
    rho_fit: float  # of the plain posterior mean
    rho: float  # of the written grammar
    shrink: float  # t in (1 - t) * fit + t * prior; 0 when not shrunk
    notes: tuple[str, ...]  # per rule: uses, states pooled, largest change


def fit_grammar(text: str, path: str, archs: Sequence[str], strength: float = DEFAULT_STRENGTH,
                header: Sequence[str] = (), mode: str | None = None, max_rho: float = MAX_RHO,
                library: Library = BUILTIN) -> Fit:
    """Fit ``text``'s probabilities to the derivations of ``archs``; returns the new grammar.

    ``library`` is the operation library the grammar is compiled with (plugins included).

    ``header`` lines become a comment at the top of the written text. Raises ``FitError`` or
    ``ArchError`` (a string that is not a derivation of the grammar).
    """
    from .ein import compile_ein, read_ein

    if not archs:
        raise FitError("no architectures to fit to")
    if not (strength > 0 and math.isfinite(strength)):
        raise FitError(f"the prior strength must be a positive number, not {strength}")
    _, _, sources = read_ein(text, path, library)
    if len(sources.text) > 1:
        raise FitError(f"{path}: error: the grammar includes other files; fit rewrites one file: "
                       "inline the included files first")
    table = compile_ein(text, path, library)
    counts = count_uses(archs, table, mode)
    prior = prior_of(table)
    fitted = posterior(table, counts, strength)
    rho_prior = spectral_radius(table)
    _, t, _ = shrink(table, fitted, prior, max_rho)
    rho_fit = spectral_radius(with_probabilities(table, fitted))
    for _ in range(60):  # the written probabilities are rounded: check rho on what is written
        lines = list(header)
        if t > 0:
            lines.append(f"shrunk towards the prior by t = {t:.4f} (the plain fit has rho = {rho_fit:.4f}; "
                         f"kept rho <= {max_rho})")
        out = render(text, path, table, mix(fitted, prior, t), lines)
        try:
            new = compile_ein(out, path, library)
        except EinError as e:  # a bug here, not the user's: say so in one line
            raise FitError(f"the fitted grammar does not compile: {str(e).splitlines()[0]}") from None
        rho = spectral_radius(new)
        if rho <= max_rho or t >= 1:
            break
        t = min(1.0, t + max(0.002, (1 - t) * 0.01))
    return Fit(out, new, counts, rho_prior, rho_fit, rho, t,
               tuple(_notes(table, counts, prior, mix(fitted, prior, t))))


def _notes(table: RuleTable, counts: Counts, prior: dict, probs: dict) -> list[str]:
    pooled = counts.per_rule()
    out = []
    for head, rules in table.rules.items():
        for ri, rule in enumerate(rules):
            rid = (head, ri)
            n = sum(pooled.get(rid, {}).values())
            name = head + ("(" + ", ".join(_guard(g) for g in rule.guards) + ")" if rule.guards else "")
            if not n:
                out.append(f"{name}: no uses; prior kept")
                continue
            k = max(range(len(rule.alternatives)), key=lambda i: abs(probs[rid][i] - prior[rid][i]))
            states = counts.states_of(rid)
            pooled_note = ""
            if len(states) > 1:
                pooled_note = "; pooled over " + ", ".join(f"{_state(s)} ({c})" for s, c in states.items())
            out.append(f"{name}: {n} use{'s' if n != 1 else ''}; "
                       f"largest change {_alt_name(rule.alternatives[k], table)} "
                       f"{prior[rid][k]:.4f} -> {probs[rid][k]:.4f}{pooled_note}")
    return out


def _guard(g) -> str:
    vals = sorted(map(show_value, g.values))
    return f"{g.param}={vals[0]}" if len(vals) == 1 else f"{g.param} in {{{', '.join(vals)}}}"


def _state(key: StateKey) -> str:
    _, m, b, params = key
    return ", ".join([f"m={m or 'mixed'}", f"b={b}"] + [f"{k}={show_value(v)}" for k, v in params])


def _alt_name(alt: Alternative, table: RuleTable) -> str:
    if alt.label:
        return alt.label
    parts = [_op_text(el, table) if isinstance(el, OpCall) else el.name
             for el in alt.body if isinstance(el, (OpCall, Ref))]
    return " ".join(parts) or alt.head
