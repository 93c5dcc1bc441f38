"""The ``einc`` command line: the only module that prints, reads argv or exits.

Every user-facing failure is an ``EinError`` (or a click usage error) and ends as one located
message and a non-zero exit: 1 for bad input, 2 for bad usage. Heavy imports (torch, the
runtime) happen inside the commands that need them.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import click

from .errors import EinError


def _fail(message: str, code: int = 1) -> None:
    click.echo(message, err=True)
    sys.exit(code)


class _Group(click.Group):
    """Turns EinError (and a user's interrupt) into a message and an exit code, never a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except EinError as e:
            _fail(str(e))
        except KeyboardInterrupt:
            _fail("interrupted", 130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="einc")
def main() -> None:
    """einc: search spaces written as grammars, compiled to PyTorch."""


def parse_shape(value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        shape = tuple(int(v) for v in value.replace("x", ",").split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f'"{value}" is not a shape such as 3,32,32') from None
    if len(shape) not in (2, 3) or min(shape) < 1:
        raise click.BadParameter(f'"{value}": a shape is C,H,W (Im mode) or S,D (Col mode) of positive sizes')
    return shape


def _shape_option(f):
    return click.option("--input", "input_shape", callback=lambda c, p, v: parse_shape(v),
                        help="Input shape without batch: C,H,W (Im mode) or S,D (Col mode).")(f)


def load_plugins(paths: tuple[str, ...]):
    """The built-in library, extended by each plugin file's ``OPS`` list (explicit opt-in only)."""
    from .ops import BUILTIN
    from .plugins import load_plugin

    library = BUILTIN
    for path in paths:
        library = library.extend(load_plugin(path))
    return library


_plugin_option = click.option("--plugin", "plugins", multiple=True, type=click.Path(dir_okay=False),
                              help="A Python file whose OPS list adds operations (runs that file).")


@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report.")
@_plugin_option
def check(file: str, as_json: bool, plugins: tuple[str, ...]) -> None:
    """Check a .ein grammar and report its size and consistency."""
    from .ein import analyse

    library = load_plugins(plugins)
    try:
        text = Path(file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        _fail(f"{file}:1:1: error: cannot read: {getattr(e, 'strerror', None) or type(e).__name__}  [include]")
    table, diags, report = analyse(text, file, library)
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
    if x != x:
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
    if x != x:
        return "none"
    return "infinite" if math.isinf(x) else f"{x:.4g}"


if __name__ == "__main__":  # pragma: no cover
    main()
