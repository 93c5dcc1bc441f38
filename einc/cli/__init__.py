"""The ``einc`` command line: the only package that prints, reads argv or exits.

One module per command (or pair of commands): each defines its click command and this group adds
it; what they share (how a failure is reported, how plugins load, how an architecture argument is
read) lives once in ``_common``. Heavy imports (torch, the runtime) happen inside the commands
that need them, so ``einc --help`` stays fast.
"""

from __future__ import annotations

import click

from . import check, compile, draw, fit, fmt, proxies, sample, search, trials
from ._common import INTERNAL_ERROR, _Group, load_plugins, looks_like_arch, parse_shape, read_arch_argument

__all__ = ["INTERNAL_ERROR", "load_plugins", "looks_like_arch", "main", "parse_shape", "read_arch_argument"]


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="einc")
def main() -> None:
    """einc: search spaces written as grammars, compiled to PyTorch."""


for _command in (check.check, compile.compile_, draw.draw_, fit.fit_, fmt.fmt_, sample.sample, sample.stats,
                 search.search, search.report, proxies.proxies, trials.trials):
    main.add_command(_command)
