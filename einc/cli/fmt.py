"""``einc fmt``: architecture files in the canonical indented form."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..errors import ArchError
from ._common import _fail, _located, _plugin_option, _read_arch_file, load_plugins, parse_shape


@click.command("fmt")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--grammar", "-g", default="einspace", show_default=True,
              help="A bundled grammar's name or the path of a .ein file.")
@click.option("--input", "input_shape", callback=lambda c, p, v: parse_shape(v),
              help="Input shape (its rank sets the mode); default: the grammar's start mode, then the other.")
@click.option("-i", "--in-place", is_flag=True, help="Rewrite the files that are not formatted.")
@click.option("--check", is_flag=True, help="Change nothing; exit 1 when a file is not formatted.")
@click.option("--width", type=click.IntRange(20), default=100, show_default=True, help="Columns per line.")
@_plugin_option
def fmt_(files: tuple[str, ...], grammar: str, input_shape, in_place: bool, check: bool, width: int,
         plugins: tuple[str, ...]) -> None:
    """Print architecture files in the canonical indented form (one child per line past WIDTH)."""
    from .. import load
    from ..fmt import fmt, parse_any_mode
    from ..ops import feature_for

    if in_place and check:
        raise click.UsageError("give -i or --check, not both")
    g = load(grammar, load_plugins(plugins))
    mode = feature_for(input_shape).mode if input_shape else None
    unformatted = 0
    for path in files:
        text = _read_arch_file(path)
        try:
            tree = parse_any_mode(text, g.table, mode)
        except ArchError as e:
            _fail(_located(e, path))
        new = fmt(tree, width) + "\n"
        if check:
            if new != text:
                unformatted += 1
                click.echo(f"{path}: not formatted (einc fmt -i {path})", err=True)
        elif in_place:
            if new != text:
                try:
                    Path(path).write_text(new, encoding="utf-8")
                except OSError as e:
                    _fail(f"{path}: error: cannot write: {e.strerror or type(e).__name__}")
                click.echo(f"reformatted {path}", err=True)
        else:
            click.echo(new, nl=False)
    sys.exit(1 if unformatted else 0)
