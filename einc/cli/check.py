"""``einc check``: a grammar's diagnostics and its PCFG report (text or JSON)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import click

from ._common import _fail, _plugin_option, load_plugins


@click.command()
@click.argument("file")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report.")
@_plugin_option
def check(file: str, as_json: bool, plugins: tuple[str, ...]) -> None:
    """Check a .ein grammar (a path, or a bundled name such as einspace) and report on it."""
    from ..ein import analyse, grammar_path, read_grammar, read_problem

    library = load_plugins(plugins)
    try:
        path = grammar_path(file)
        text = read_grammar(path)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        _fail(f"{file}:1:1: error: cannot read: {read_problem(e)}  [include]")
    table, diags, report = analyse(text, str(path) if path != Path(file) else file, library)
    errors = [d for d in diags if d.severity == "error"]
    if as_json:
        click.echo(json.dumps(_report_json(file, table, diags, report), indent=2))
    else:
        for d in diags:
            click.echo(d.render(), err=True)
        if not errors and table is not None and report is not None:
            click.echo(format_report(file, table, report))
        elif errors:
            click.echo(f"{file}: {len(errors)} error(s)", err=True)
    sys.exit(1 if errors else 0)


def _num(x: float) -> float | str | None:
    if math.isnan(x):
        return None
    return "infinite" if math.isinf(x) else round(x, 6)


def _report_json(file, table, diags, report) -> dict:
    out: dict = {"file": file, "ok": not any(d.severity == "error" for d in diags),
                 "diagnostics": [{"line": d.span.line if d.span else None, "col": d.span.col if d.span else None,
                                  "path": d.span.path if d.span else None, "severity": d.severity,
                                  "code": d.code, "message": d.message} for d in diags]}
    if table is not None and report is not None:
        out.update({
            "start": table.start.symbol, "nonterminals": len(table.rules),
            "rules": sum(len(r) for r in table.rules.values()),
            "alternatives": sum(len(r.alternatives) for rs in table.rules.values() for r in rs),
            "spectral_radius": report.rho, "network_spectral_radius": report.rho_network,
            "consistent": report.rho < 1,
            "expected_expansions": {k: _num(v) for k, v in report.expansions.items()},
            "expected_derivation_nonterminals": _num(report.expected_nonterminals),
            "expected_derivation_terminals": _num(report.expected_terminals),
            "expected_network_operations": _num(report.network_terminals),
            "critical_probabilities": {k: {"consistency": _num(c), "finite_network_size": _num(n), "now": now}
                                       for k, (c, n, now) in report.critical.items()},
        })
    return out


def format_report(file: str, table, report) -> str:
    nrules = sum(len(r) for r in table.rules.values())
    nalts = sum(len(r.alternatives) for rs in table.rules.values() for r in rs)
    shape = f" {table.start.shape}" if table.start.shape else ""
    lines = [f"{file}: {len(table.rules)} nonterminals, {nrules} rules, {nalts} alternatives "
             f"(after op variants); start {table.start.symbol}, {report.start_mode}{shape}",
             f"spectral radius rho = {report.rho:.4f}: " + ("consistent (< 1)" if report.rho < 1 else "NOT consistent"),
             "expected expansions per derivation ((I - E)^-1 from the start):",
             "  " + "  ".join(f"{k} {_fmt(v)}" for k, v in report.expansions.items()),
             f"expected derivation size: {_fmt(report.expected_nonterminals)} nonterminals + "
             f"{_fmt(report.expected_terminals)} operations",
             "expected network size (repeated subtrees counted per copy): " +
             (f"{_fmt(report.network_terminals)} operations" if not math.isinf(report.network_terminals)
              else f"infinite (network radius {report.rho_network:.4f} >= 1)")]
    if report.critical:
        lines.append("critical probability of each recursive nonterminal's terminating alternatives:")
        for head, (crit, net, now) in report.critical.items():
            lines.append(f"  {head}: now {now:.4f}; consistent above {_fmt(crit)}; "
                         f"finite expected network size above {_fmt(net)}")
    return "\n".join(lines)


def _fmt(x: float) -> str:
    if math.isnan(x):
        return "none"
    return "infinite" if math.isinf(x) else f"{x:.4g}"
