"""Semantic checks over a built RuleTable, one small function each, appending diagnostics.

Order matters only for noise: later checks (reachability, consistency) are skipped when an
earlier one found errors they would merely echo.
"""

from __future__ import annotations

import itertools
import math
import operator
from collections.abc import Callable

from .errors import Diagnostic
from .ops import MODES, show_value
from .pcfg import Report, analyse, env_of, reachability, show_state
from .table import Branches, OpCall, Ref, RuleTable, merge_params

Diag = Callable[..., Diagnostic]  # (span, code, message, severity="error") -> Diagnostic


def check_undefined(table: RuleTable, diag: Diag) -> list[Diagnostic]:
    out = []
    if table.start.symbol not in table.rules:
        out.append(diag(table.start.span, "undefined-symbol", f'start symbol "{table.start.symbol}" has no rule'))
    for rules in table.rules.values():
        for rule in rules:
            for alt in rule.alternatives:
                for ref in alt.refs:
                    if ref.name not in table.rules:
                        out.append(diag(ref.span, "undefined-symbol", f'undefined nonterminal "{ref.name}"'
                                        + _suggest(ref.name, table.rules)))
    return out


def check_overlapping_rules(table: RuleTable, diag: Diag) -> list[Diagnostic]:
    """At most one rule of a nonterminal may accept any finite state."""
    out = []
    for head, rules in table.rules.items():
        for i, later in enumerate(rules):
            for earlier in rules[:i]:
                env = _common_env(table, earlier, later)
                if env is not None:
                    what = ", ".join(f"{k}={show_value(v)}" for k, v in env.items() if v is not None)
                    first = f"; first at line {earlier.span.line}" if earlier.span else ""
                    out.append(diag(later.span, "duplicate-rule",
                                    f'a second rule for "{head}" that also applies when {what}{first}'))
                    break
    return out


def _common_env(table: RuleTable, a, b) -> dict | None:
    params = sorted(table.params.items())
    bs = sorted({1} | {v for r in (a, b) for g in r.guards if g.param == "b" for v in g.values
                       if type(v) is int})  # other values are bad-guard errors already
    for m, bval, *rest in itertools.product(MODES, bs, *[sorted(vs, key=repr) for _, vs in params]):
        env = {"m": m, "b": bval, **{k: v for (k, _), v in zip(params, rest, strict=True)}}
        if a.matches(env) and b.matches(env):
            return env
    return None


def check_branch_arms(table: RuleTable, diag: Diag) -> list[Diagnostic]:
    out = []
    for rules in table.rules.values():
        for rule in rules:
            seen = set()
            for alt in rule.alternatives:
                for el in alt.body:
                    if not isinstance(el, Branches) or id(el) in seen:
                        continue
                    seen.add(id(el))
                    for arm in el.arms:
                        bs = [v for g in arm.guards if g.param == "b" for v in g.values if type(v) is int]
                        if not arm.repeated and bs and len(arm.items) not in bs:
                            out.append(diag(arm.span, "bad-branches",
                                            f"{len(arm.items)} independent branches can never match "
                                            f"b in {{{', '.join(map(str, sorted(bs)))}}}; use one name with \"*\" "
                                            "to repeat it"))
    return out


def check_reachability(table: RuleTable, diag: Diag, mode: str) -> list[Diagnostic]:
    """Unreachable nonterminals, guard coverage holes and nonterminals with no finite tree."""
    sol = reachability(table, mode)
    out = []
    reached = {k[0] for k in sol.keys}
    for head, rules in table.rules.items():
        if head not in reached:
            out.append(diag(rules[0].span, "unreachable",
                            f'nonterminal "{head}" is unreachable from "{table.start.symbol}"', "warning"))
    holes = set()
    for key in sol.keys:
        if key[0] in table.rules and table.rule_for(key[0], env_of(key)) is None:
            holes.add(key[0])
            ref = sol.first_ref.get(key)
            out.append(diag(ref.span if ref else table.start.span, "guard-coverage",
                            f'"{key[0]}" is reachable with {show_state(key)} but no rule of it applies there'))
    if not holes:
        # A state with no finite tree is only a dead end the sampler backs out of (einspace's
        # A after branches that end in different modes); a nonterminal with none in any
        # reachable state is an error.
        finishing = {k[0] for k in sol.keys if sol.out.get(k)}
        for head in table.rules:
            if head in reached and head not in finishing:
                out.append(diag(table.rules[head][0].span, "no-finite-derivation",
                                f'"{head}" can derive no finite tree'))
    return out


def check_names(table: RuleTable, diag: Diag) -> list[Diagnostic]:
    """Every string must name one derivation: ``parse(show(t)) == t`` for every tree.

    Bracket notation writes a labelled alternative by its label and elides an unlabelled
    single operation or nonterminal. So, in each reachable state of a nonterminal, the names
    that can stand for it (its labels and elided operations, and those of the nonterminals an
    unlabelled single nonterminal leads to) must not repeat along different chains, and no chain
    of elided nonterminals may lead back to where it started. Both start modes are checked:
    einspace, for one, is used with Im and Col inputs.
    """
    out: list[Diagnostic] = []
    for mode in MODES:
        for key in reachability(table, mode).keys:
            out += _names_at(table, key, diag)
    return out


def _names_at(table: RuleTable, key, diag: Diag) -> list[Diagnostic]:
    head0, m, b, params0 = key
    ways: list[tuple] = []  # (name, label or (op, args), chain of elided nonterminals, alternative)
    out: list[Diagnostic] = []
    todo: list[tuple] = [(head0, params0, (head0,), frozenset([(head0, params0)]))]
    while todo:
        head, params, chain, seen = todo.pop()
        rule = table.rule_for(head, {"m": m, "b": b, **dict(params)})
        for alt in rule.alternatives if rule else ():
            el = alt.body[0]
            if alt.label:
                ways.append((alt.label, alt.label, chain, alt))
            elif len(alt.body) == 1 and isinstance(el, OpCall):
                ways.append((el.op, (el.op, el.args), chain, alt))
            elif len(alt.body) == 1 and isinstance(el, Ref):
                inner = merge_params(params, el.sets)
                if (el.name, inner) in seen:
                    out.append(diag(el.span, "ambiguous-name",
                                    f'unlabelled alternatives lead from "{el.name}" back to itself '
                                    f'({" -> ".join(chain[chain.index(el.name):] + (el.name,))}), so one string '
                                    "would stand for any number of turns of the loop; label one of them"))
                else:
                    todo.append((el.name, inner, chain + (el.name,), seen | {(el.name, inner)}))
    first: dict[str, tuple] = {}
    for way in ways:
        name, what, chain, alt = way
        if name not in first:
            first[name] = way
            continue
        _, what0, chain0, alt0 = first[name]
        label_clash = isinstance(what, str) or isinstance(what0, str)
        if (chain != chain0 and (label_clash or what == what0)) or (
                chain == chain0 and label_clash and alt.label != alt0.label):
            out.append(diag(alt.span, "ambiguous-name",
                            f'"{name}" would stand for two derivations of "{head0}": {_way(first[name])} and '
                            f"{_way(way)}; bracket notation could not tell them apart: rename a label or add one"))
    return out


def _way(way) -> str:
    _, what, chain, alt = way
    kind = f'the label of "{alt.head}"' if isinstance(what, str) else f'the operation of "{alt.head}"'
    at = f" (line {alt.span.line})" if alt.span else ""
    via = f' via {" -> ".join(chain)}' if len(chain) > 1 else ""
    return kind + at + via


def check_consistency(table: RuleTable, diag: Diag, mode: str) -> tuple[list[Diagnostic], Report]:
    report = analyse(table, mode)
    out = []
    if report.rho >= 1:
        recursive = list(report.critical) or list(table.rules)
        span = table.rules[recursive[0]][0].span
        crit = report.critical.get(recursive[0], (float("nan"),))[0]
        hint = (f'; raise the probability of "{recursive[0]}"\'s terminating alternatives above {crit:.4g}'
                if not math.isnan(crit) else "")
        out.append(diag(span, "inconsistent",
                        f"the grammar is not consistent: spectral radius {report.rho:.4f} >= 1{hint}"))
    return out, report


def run_checks(table: RuleTable, diag: Diag, has_errors: bool = False) -> tuple[list[Diagnostic], Report | None]:
    out = check_undefined(table, diag) + check_overlapping_rules(table, diag) + check_branch_arms(table, diag)
    if has_errors or any(d.severity == "error" for d in out):
        return out, None
    mode = table.start.mode
    if mode is None:
        out.append(diag(table.start.span, "bad-start", "start needs a shape or m=Im / m=Col"))
        return out, None
    out += check_reachability(table, diag, mode)
    if any(d.severity == "error" for d in out):
        return out, None
    out += check_names(table, diag)
    consistency, report = check_consistency(table, diag, mode)
    return out + consistency, report


def check_input(table: RuleTable, shape) -> tuple[int, ...]:
    """``shape`` as a tuple if the grammar can take it as input; else ``InputError`` saying why.

    The shape must be C,H,W (Im mode) or S,D (Col mode) of positive sizes. Its mode must be the
    start's, unless the grammar has rules for the other mode (a guard or arm on ``m`` naming
    it, as einspace has for both) and derives something there: a grammar written for Col
    features would otherwise run silently on image rows. Call it before sampling or searching
    so that a mismatch is named at once, not found later as "no valid derivation".
    """
    from .errors import InputError

    try:
        dims = tuple(operator.index(d) for d in shape if not isinstance(d, bool))
        whole = len(dims) == len(shape)
    except TypeError:  # not a sequence, or a size that is not an integer
        dims, whole = (), False
    if not (whole and len(dims) in (2, 3) and min(dims) >= 1):
        raise InputError(f"an input shape is C,H,W (Im mode) or S,D (Col mode) of positive integers, not {shape!r}")
    mode, start = ("Im" if len(dims) == 3 else "Col"), table.start
    if mode == start.mode or start.mode is None:
        return dims
    key = ("input-mode", mode)
    if key not in table.cache:
        table.cache[key] = _mode_problem(table, mode)
    problem = table.cache[key]
    if problem:
        shown = ",".join(map(str, dims))
        raise InputError(f"the grammar starts in mode {start.mode}; the input {shown} is {mode}: {problem}", start.span)
    return dims


def _mode_problem(table: RuleTable, mode: str) -> str | None:
    """Why the grammar cannot start in ``mode`` (other than its start's), or None."""
    want = "C,H,W" if table.start.mode == "Im" else "S,D"
    guarded = any(mode in g.values for rules in table.rules.values() for r in rules
                  for g in r.guards + tuple(g for a in r.alternatives for e in a.body if isinstance(e, Branches)
                                            for arm in e.arms for g in arm.guards) if g.param == "m")
    if not guarded:
        return f"no rule of the grammar is written for m={mode}; give a {want} input"
    sol = reachability(table, mode)
    start = sol.keys[0]
    if sol.out.get(start):
        return None
    for key in sol.keys:
        if table.rule_for(key[0], env_of(key)) is None:
            return f'no rule of "{key[0]}" applies with {show_state(key)}; give a {want} input'
    return f'"{start[0]}" derives nothing from an {mode} input; give a {want} input'


def _suggest(name: str, names) -> str:
    import difflib

    close = difflib.get_close_matches(name, list(names), n=1)
    return f'; did you mean "{close[0]}"?' if close else ""
