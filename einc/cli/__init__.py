"""The ``einc`` command line: the only package that prints, reads argv or exits.

One module per command (or pair of commands): each defines its click command, which this group
imports when it runs (``_COMMANDS``); what they share (how a failure is reported, how plugins
load, how an architecture argument is read) lives once in ``_common``. Heavy imports (torch, the
runtime) happen inside the commands that need them, so ``einc --help`` stays fast.
"""

from __future__ import annotations

import importlib

import click

from ._common import INTERNAL_ERROR, _Group, load_plugins, looks_like_arch, parse_shape, read_arch_argument

__all__ = ["INTERNAL_ERROR", "load_plugins", "looks_like_arch", "main", "parse_shape", "read_arch_argument"]

_COMMANDS = {"check": "check:check", "compile": "compile:compile_", "draw": "draw:draw_", "fit": "fit:fit_",
             "fmt": "fmt:fmt_", "sample": "sample:sample", "stats": "sample:stats", "search": "search:search",
             "report": "search:report", "proxies": "proxies:proxies", "trials": "trials:trials"}
"""Each command's module and object, imported when the command runs or ``--help`` lists it."""


class _Commands(_Group):
    """Imports a command's module only when it is run (``einc search`` imports the runtime, numpy and
    matplotlib: a third of a second, more under load). The import happens inside ``_Group.invoke``,
    so a Ctrl-C meanwhile ends as "interrupted" and exit 130, not as a traceback."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in _COMMANDS:
            return None
        module, attr = _COMMANDS[name].split(":")
        return getattr(importlib.import_module(f"{__name__}.{module}"), attr)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="einc")
def main() -> None:
    """einc: search spaces written as grammars, compiled to PyTorch."""
