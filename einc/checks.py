"""Semantic checks over a built RuleTable, one small function each, appending diagnostics.

Order matters only for noise: later checks (reachability, consistency) are skipped when an
earlier one found errors they would merely echo.
"""

from __future__ import annotations

import itertools
from typing import Callable

from .errors import Diagnostic
from .ops import MODES, show_value
from .pcfg import Report, analyse, env_of, reachability, show_state
from .table import Branches, RuleTable

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
                    out.append(diag(later.span, "duplicate-rule",
                                    f'a second rule for "{head}" that also applies when {what}; '
                                    f"first at line {earlier.span.line}" if earlier.span else ""))
                    break
    return out


def _common_env(table: RuleTable, a, b) -> dict | None:
    params = sorted(table.params.items())
    bs = sorted({1} | {v for r in (a, b) for g in r.guards if g.param == "b" for v in g.values
                       if type(v) is int})  # other values are bad-guard errors already
    for m, bval, *rest in itertools.product(MODES, bs, *[sorted(vs, key=repr) for _, vs in params]):
        env = {"m": m, "b": bval, **{k: v for (k, _), v in zip(params, rest)}}
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


def check_consistency(table: RuleTable, diag: Diag, mode: str) -> tuple[list[Diagnostic], Report]:
    report = analyse(table, mode)
    out = []
    if report.rho >= 1:
        recursive = list(report.critical) or list(table.rules)
        span = table.rules[recursive[0]][0].span
        crit = report.critical.get(recursive[0], (float("nan"),))[0]
        hint = (f'; raise the probability of "{recursive[0]}"\'s terminating alternatives above {crit:.4g}'
                if crit == crit else "")
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
    consistency, report = check_consistency(table, diag, mode)
    return out + consistency, report


def _suggest(name: str, names) -> str:
    import difflib

    close = difflib.get_close_matches(name, list(names), n=1)
    return f'; did you mean "{close[0]}"?' if close else ""
