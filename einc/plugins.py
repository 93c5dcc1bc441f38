"""Loading a user's own operations from a Python file the user names explicitly.

This is the only place einc runs user code, and only for a path given on the command line
or to the API; a .ein file can name operations but never load them.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from .errors import EinError
from .ops import BUILTIN, Library, Op
from .ops.base import OpError


def library(paths: tuple[str, ...] | list[str] = ()) -> Library:
    """The built-in library extended by each plugin file's ``OPS`` (the CLI, the API and workers all load so)."""
    lib = BUILTIN
    for path in paths:
        lib = lib.extend(load_plugin(path))
    return lib


def load_plugin(path: str | Path) -> list[Op]:
    """The ``OPS`` list of the Python file at ``path``."""
    p = Path(path)
    spec = importlib.util.spec_from_file_location(f"einc_plugin_{p.stem}", p)
    if spec is None or spec.loader is None or not p.is_file():
        raise EinError(f'{path}: error: cannot load plugin: no such Python file')
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # the user's code: whatever it raises is reported, in one line
        line = e.lineno if isinstance(e, SyntaxError) else _line_in(e, p)
        where = f"{path}:{line}" if line else str(path)
        what = "" if isinstance(e, OpError) else f"{type(e).__name__}: "  # an OpError names the op itself
        raise EinError(f"{where}: error: cannot load plugin: {what}" + (str(e).splitlines() or [""])[0]) from None
    ops = getattr(module, "OPS", None)
    if not isinstance(ops, (list, tuple)) or not all(isinstance(o, Op) for o in ops):
        raise EinError(f"{path}: error: a plugin defines OPS, a list of einc.ops.Op")
    return list(ops)


def _line_in(e: BaseException, path: Path) -> int | None:
    """The line of ``path`` that was running when ``e`` was raised (the innermost such frame)."""
    line, target = None, str(path.resolve())
    tb = e.__traceback__
    while tb is not None:
        if str(Path(tb.tb_frame.f_code.co_filename).resolve()) == target:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line
