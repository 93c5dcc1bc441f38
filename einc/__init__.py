"""einc: a compiler and search runtime for neural-architecture search spaces written as grammars.

    >>> import einc
    >>> g = einc.load("einspace")            # or a path to your own .ein file
    >>> g.start.symbol
    'S'
"""

from .errors import EinError
from .ein import compile_ein, load
from .table import RuleTable

__version__ = "0.1.0"
__all__ = ["EinError", "RuleTable", "__version__", "compile_ein", "load"]
