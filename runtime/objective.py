"""A user's own objective: ``FUNC(arch, ctx)`` scores each candidate instead of einc's training.

The function takes an ``einc.Architecture`` and a ``Context`` (input shape, seed, device,
epochs, time limit, the loaded dataset or None, a folder for the candidate's files) and returns
a float, or a dict with ``score`` and any other metrics to journal. einc journals the score as
``metrics["score"]`` and a search ranks by it (``Goal("score", minimize)``, runtime/goal.py).

**Shipping it to the workers.** Workers are processes forked from a fork server (or Ray actors),
and a function defined in ``__main__`` (a script, a notebook cell) cannot be pickled by reference
there: the worker's ``__main__`` is not the user's. So the driver pickles the function *by value*
with cloudpickle (``ship``): its code, closure and the globals it uses travel with each job;
modules it uses (torch, numpy, the user's installed packages) are pickled by reference and
imported in the worker. A function read from a file (``einc search --objective FILE.py:FUNC``)
is shipped by value the same way, so a Ray cluster needs no shared filesystem for it; one named
``module:FUNC`` is shipped by reference and must be importable where the workers run.

No torch here: this module is imported by the driver and by ``einc.search`` before any worker.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from einc.errors import EinError, one_line

ASK_TELL = "ask/tell"
"""The ``objective`` recorded by an ``einc.Study``: its scores are told, not computed by a function."""


class ObjectiveError(EinError):
    """An objective cannot be loaded, or returned something that is not a score."""


@dataclass(frozen=True)
class Context:
    """What an objective gets besides the architecture.

    ``epochs`` is the fidelity of this evaluation (``epochs``, or the rung's under ``fidelity``);
    ``data`` is the search's loaded ``Dataset`` (runtime/data.py), or None when it names none;
    ``folder`` exists and is this candidate's own (``OUT/trials/INDEX``) for any files it writes;
    ``device`` is the worker's ("cpu", "cuda:1", ...); ``index`` the candidate's number in the journal.
    """

    input_shape: tuple[int, ...]
    seed: int
    device: str
    epochs: int
    time_limit: float | None
    data: Any
    folder: Path
    index: int


def describe(fn: Callable[..., Any]) -> str:
    """``module:qualname`` of a function, as config.json records an objective given from Python."""
    return f"{getattr(fn, '__module__', None) or '?'}:{getattr(fn, '__qualname__', type(fn).__name__)}"


def load_objective(ref: str) -> Callable[..., Any]:
    """The function named by ``FILE.py:FUNC`` (the file is run, as a module of its own) or ``module:FUNC``.

    A module is looked up from the current directory first, as ``python -m`` does.
    """
    path, sep, name = ref.rpartition(":")
    if not sep or not path or not name:
        raise ObjectiveError(f'objective "{ref}": name it FILE.py:FUNC or module:FUNC')
    if path.startswith("__main__") or path == "?":
        raise ObjectiveError(f'objective "{ref}" was a function of a Python session, not of a file or module; '
                             "pass the function again from Python (einc.search(objective, out=...) resumes)")
    if path.endswith(".py") or os.sep in path:
        file = Path(path).resolve()
        if not file.is_file():
            raise ObjectiveError(f"{path}: error: no such objective file")
        module_name = "einc_objective_" + hashlib.sha256(str(file).encode()).hexdigest()[:12]
        module = sys.modules.get(module_name)
        if module is None:
            spec = importlib.util.spec_from_file_location(module_name, file)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module  # dataclasses and pickling look modules up by name
            try:
                spec.loader.exec_module(module)
            except BaseException as e:
                del sys.modules[module_name]
                if isinstance(e, (KeyboardInterrupt, SystemExit)):
                    raise
                raise ObjectiveError(f"{path}: error: running the objective file failed: {one_line(e)}") from None
            import cloudpickle

            cloudpickle.register_pickle_by_value(module)  # its functions travel by value: no shared filesystem
        where = str(path)
    else:
        if "" not in sys.path and os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        try:
            module = importlib.import_module(path)
        except ImportError as e:
            raise ObjectiveError(f'objective "{ref}": cannot import module {path} ({e})') from None
        where = f"module {path}"
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ObjectiveError(f"{where}: error: no function {name} in it" if fn is None
                             else f"{where}: error: {name} is a {type(fn).__name__}, not a function")
    return fn


def check_callable(fn: Any) -> None:
    if not callable(fn):
        raise ObjectiveError(f"the objective must be a function FUNC(arch, ctx), not {type(fn).__name__}")


def ship(fn: Callable[..., Any]) -> bytes:
    """``fn`` pickled for the workers: by value when it lives in ``__main__`` or an objective file."""
    import cloudpickle

    check_callable(fn)
    try:
        return cloudpickle.dumps(fn)
    except Exception as e:
        raise ObjectiveError(f"the objective {describe(fn)} cannot be sent to the workers: "
                             f"{type(e).__name__}: {e} (it, or a global it uses, cannot be pickled; "
                             "create such objects inside the function)") from None


def unship(blob: bytes) -> Callable[..., Any]:
    import cloudpickle

    return cloudpickle.loads(blob)


def metrics(value: Any) -> dict[str, Any]:
    """The journaled metrics of an objective's return value: ``{"score": float, **other metrics}``.

    A float (or anything ``float()`` takes: numpy and 0-d torch numbers), or a dict with a
    ``score`` of that kind; a non-finite or missing score raises ``ObjectiveError``, which makes
    the evaluation a failed one with that reason. Other metrics that are non-finite numbers are
    journaled as None (JSON has no NaN).
    """
    if isinstance(value, dict):
        if "score" not in value:
            keys = ", ".join(map(str, value)) or "none"
            raise ObjectiveError(f'the objective returned a dict without "score" (its keys: {keys})')
        extra = {}
        for k, v in value.items():
            if k == "score":
                continue
            if not isinstance(k, str):
                raise ObjectiveError(f"the objective returned a metric named {k!r}; metric names are strings")
            extra[k] = _plain(v)
        return {"score": _score(value["score"]), **extra}
    return {"score": _score(value)}


def _score(v: Any) -> float:
    if isinstance(v, (bool, str, bytes)) or v is None or not hasattr(v, "__float__"):
        raise ObjectiveError(f"the objective's score is {_show(v)}, not a number")
    try:
        f = float(v)
    except (TypeError, ValueError, RuntimeError) as e:  # a tensor of more than one element, say
        raise ObjectiveError(f"the objective's score {_show(v)} is not one number ({e})") from None
    if not math.isfinite(f):
        raise ObjectiveError(f"the objective's score is {f}, not a finite number")
    return f


def _plain(v: Any) -> Any:
    if isinstance(v, bool) or v is None or isinstance(v, (str, int)):
        return v
    if isinstance(v, float) or (hasattr(v, "__float__") and getattr(v, "ndim", 0) == 0
                                and not isinstance(v, (list, tuple, dict))):
        try:
            f = float(v)
        except (TypeError, ValueError, RuntimeError):
            return v
        if type(v).__module__ == "numpy" and hasattr(v, "item") and isinstance(v.item(), int):
            return v.item()
        return f if math.isfinite(f) else None
    return v  # lists, dicts: journaled as they are if JSON takes them, else the evaluation fails saying so


def _show(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."
