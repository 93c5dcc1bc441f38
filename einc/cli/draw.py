"""``einc draw``: an architecture's dataflow graph and derivation tree as a picture."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import ArchError
from ._common import _fail, _located, _plugin_option, _shape_option, load_plugins, read_arch_argument


@click.command("draw")
@click.argument("arch")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="The picture to write: .svg or .png.")
@click.option("--grammar", "-g", default="einspace", show_default=True,
              help="A bundled grammar's name or the path of a .ein file.")
@_shape_option
@click.option("--depth", type=click.IntRange(0), default=None,
              help="Collapse modules deeper than K levels of the bracket tree into one node.")
@click.option("--title", default=None, help="A heading for the picture [default: the file's name].")
@_plugin_option
def draw_(arch: str, output: str, grammar: str, input_shape, depth, title, plugins: tuple[str, ...]) -> None:
    """Draw an architecture: its dataflow graph and its derivation tree (paper Figure 1 style).

    ARCH is a bracket-notation string or the path of a file holding one.
    """
    from .. import load
    from ..draw import draw

    text, source_path = read_arch_argument(arch)
    g = load(grammar, load_plugins(plugins))
    shape = input_shape or g.default_shape()
    if shape is None:
        raise click.UsageError(f'the grammar "{grammar}" declares no start shape; give --input')
    if Path(output).suffix.lower() not in (".svg", ".png"):
        raise click.BadParameter(f'"{output}": write a .svg or a .png', param_hint="-o")
    try:
        parsed = g.parse(text, shape)
    except ArchError as e:
        _fail(_located(e, source_path))
    path = draw(parsed, shape, output, depth=depth,
                title=title if title is not None else (Path(source_path).name if source_path else None))
    click.echo(f"wrote {path}", err=True)
