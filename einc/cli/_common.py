"""What every ``einc`` command shares: one way to fail, one way to load plugins, one way to read an
architecture argument, and the options that several commands take.

Every user-facing failure is an ``EinError`` (or a click usage error) and ends as one located
message and a non-zero exit: 1 for bad input, 2 for bad usage, 130 for an interrupt. Any other
exception is a bug in einc itself (a user's plugin code is reported as an ``EinError``, see
``einc.ops.is_builtin``): like mypy's, it prints its full traceback, then one line saying
"INTERNAL ERROR" and asking for a report, and exits 70 (``INTERNAL_ERROR``: sysexits.h's
EX_SOFTWARE, "internal software error"), a code no user error gives.
"""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path

import click

from ..errors import ArchError, EinError


def _fail(message: str, code: int = 1) -> None:
    click.echo(message, err=True)
    sys.exit(code)


INTERNAL_ERROR = 70
"""The exit code of a bug in einc (sysexits.h's EX_SOFTWARE); 1 and 2 are the user's errors."""


def _internal_error() -> None:
    """The exception being handled is einc's own bug: its traceback, then one line, exit 70."""
    import traceback

    from .. import __version__

    click.echo(traceback.format_exc().rstrip("\n"), err=True)
    _fail(f"einc: INTERNAL ERROR (einc {__version__}): this is a bug in einc, not in your input; "
          "please report it with the command and the traceback above", INTERNAL_ERROR)


class _Group(click.Group):
    """Turns EinError (and a user's interrupt) into a message and an exit code, never a traceback;
    any other exception is a bug in einc and keeps its traceback (``_internal_error``)."""

    def invoke(self, ctx):
        import warnings

        default = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if category.__module__.startswith("einc"):  # einc's own warnings are located lines already
                click.echo(str(message), err=True)
            else:
                default(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        try:
            return super().invoke(ctx)
        except EinError as e:
            _fail(str(e))
        except KeyboardInterrupt as e:  # a Stopped search's SIGTERM is 143
            from einc.runtime.stop import exit_code

            _fail("interrupted", exit_code(e))
        except (click.exceptions.ClickException, click.exceptions.Abort, click.exceptions.Exit, EOFError):
            raise  # usage errors, --help, an aborted prompt: click reports them
        except OSError as e:
            if e.errno == errno.EPIPE:  # `einc sample ... | head`: click closes quietly
                raise
            _internal_error()
        except Exception:
            _internal_error()
        finally:
            warnings.showwarning = default


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


TASKS = ("classification", "multilabel", "regression", "dense")  # runtime/task.py's kinds


METRICS = ("accuracy", "error", "map", "auroc", "mse", "mae", "r2", "rel-l2")  # runtime/task.py's metrics


def _shape_option(f):
    return click.option("--input", "input_shape", callback=lambda c, p, v: parse_shape(v),
                        help="Input shape without batch: C,H,W (Im mode) or S,D (Col mode).")(f)


def load_plugins(paths: tuple[str, ...]):
    """The built-in library, extended by each plugin file's ``OPS`` list (explicit opt-in only)."""
    from ..plugins import library

    return library(paths)


_plugin_option = click.option("--plugin", "plugins", multiple=True, type=click.Path(dir_okay=False),
                              help="A Python file whose OPS list adds operations (runs that file).")


def looks_like_arch(arg: str) -> bool:
    """Whether an argument that names no file is bracket-notation text rather than a path.

    Bracket notation writes "(", "[", "=" or "," as soon as it holds more than one bare op name,
    and a path hardly ever does; so such an argument is architecture text even when it also has
    a "." (``linear(d=1.5)``) or a "/". Without any, an argument with a "/", "\\", "." or "~" is
    a path, and a bare word such as ``relu`` is an architecture."""
    return _has_bracket(arg) or not any(c in arg for c in "/\\.~")


def _has_bracket(arg: str) -> bool:
    return any(c in arg for c in "()[]=,\n")


def read_arch_argument(arg: str) -> tuple[str, str | None]:
    """(architecture text, file it came from or None) for an argument that is either a path
    or a bracket-notation string. An existing file is read; an existing directory or device is
    refused; otherwise bracket notation (``looks_like_arch``) is returned as text for the parser
    to judge, and anything else is a path naming no file, reported as one."""
    if os.path.isfile(arg):  # (a long architecture string is no path: isfile says so, never raises)
        try:
            return Path(arg).read_text(encoding="utf-8"), arg
        except (OSError, UnicodeDecodeError) as e:
            reason = "not UTF-8 text" if isinstance(e, UnicodeDecodeError) else e.strerror or type(e).__name__
            _fail(f"{arg}: error: cannot read: {reason}")
    try:
        exists = os.path.exists(arg)
    except (OSError, ValueError):
        exists = False
    if exists:
        kind = "a directory" if os.path.isdir(arg) else "not a regular file"
        _fail(f"{arg}: error: {kind}; give an architecture file or a bracket-notation string")
    if not looks_like_arch(arg):
        _fail(f"{arg}: error: no such file (an architecture is a file's path or a bracket-notation string)")
    return arg, None


def _read_arch_file(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        _fail(f"{path}:1:1: error: cannot read: {getattr(e, 'strerror', None) or type(e).__name__}")
        raise  # unreachable: _fail exits


def _located(e: ArchError, path: str | None) -> str:
    """An ArchError's message with the file's name in front of its line:col."""
    return f"{path}:{e}" if path is not None and str(e)[:1].isdigit() else str(e)
