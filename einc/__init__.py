"""einc: a compiler and search runtime for neural-architecture search spaces written as grammars.

    >>> import einc
    >>> g = einc.load("einspace")            # or the path of your own .ein file
    >>> arch = g.parse("sequential(routing(im2col(k=4, s=4, p=0), linear(d=64), identity), relu)")
    >>> arch.infer((3, 32, 32)).output[0].shape
    (64, 64)

``einc.build(arch, input_shape=(3, 32, 32), num_classes=10)`` lowers it to a torch.fx
GraphModule; torch is imported only then.

The stages, each a module named after what it produces, data flowing one way:
``ein`` (.ein text -> ``table.RuleTable``), ``checks`` and ``pcfg`` (its diagnostics and
numbers), ``notation`` (bracket text <-> items), ``derivation`` (items -> a ``tree`` of the
grammar), ``infer`` (static shapes and costs), ``sample`` / ``mutate`` (new trees), ``lower``
(tree -> torch.fx), ``passes`` (exact rewrites), ``verify``, ``emit`` (standalone PyTorch).
Two subpackages live in folders at the repository root, not under ``einc/``: ``einc.grammar``
is ``grammar/`` (the notations' Lark files and bundled grammars) and ``einc.runtime`` is
``runtime/`` (search: data, training, workers, journal, strategies); pyproject.toml maps them.

Searching from Python (runtime/study.py; docs/python-api.md): ``einc.search(objective, ...)``
scores candidates with your ``objective(arch, ctx)`` in worker processes, and ``einc.Study`` is
ask-and-tell (``trial = study.ask()``, ``study.tell(trial, score)``). They, ``einc.Trial``,
``einc.TrialResult``, ``einc.SearchResult`` and ``einc.Context`` are imported when first used.
"""

import importlib as _importlib
from typing import TYPE_CHECKING

from ._version import __version__

if TYPE_CHECKING:
    from .api import Architecture, Grammar, build, compile_grammar, load
    from .errors import EinError
    from .runtime.objective import Context
    from .runtime.study import SearchResult, Study, Trial, TrialResult, search
    from .sample import Budget
    from .tree import Expansion, Fork, Leaf

__all__ = ["Architecture", "Budget", "Context", "EinError", "Expansion", "Fork", "Grammar", "Leaf", "SearchResult",
           "Study", "Trial", "TrialResult", "__version__", "build", "compile_grammar", "load", "search"]

# Every name is imported on first use, so that ``import einc`` takes milliseconds (no lark, no
# runtime, no torch): the ``einc`` command catches a Ctrl-C only once its own code runs, and a
# worker's fork server imports einc before it can ignore one.
_LAZY = {**dict.fromkeys(("Architecture", "Grammar", "build", "compile_grammar", "load"), "einc.api"),
         "EinError": "einc.errors", "Budget": "einc.sample",
         **dict.fromkeys(("Expansion", "Fork", "Leaf"), "einc.tree"),
         **dict.fromkeys(("search", "Study", "Trial", "TrialResult", "SearchResult"), "einc.runtime.study"),
         "Context": "einc.runtime.objective"}


def __getattr__(name: str):
    """``einc.sample``, ``einc.mutate``, ``einc.emit`` ... after a plain ``import einc``: each
    submodule is imported when first used, so torch still loads only when a model is built."""
    if name in _LAZY:
        return getattr(_importlib.import_module(_LAZY[name]), name)
    if not name.startswith("_"):
        try:
            return _importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
