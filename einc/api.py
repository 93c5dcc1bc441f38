"""The Python API: a grammar you can parse with, architectures you can build.

    >>> import einc
    >>> g = einc.load("einspace")
    >>> arch = g.parse("sequential(routing(im2col(k=4, s=4, p=0), linear(d=64), identity), relu)")
    >>> arch.infer((3, 32, 32)).output[0].shape
    (64, 64)
    >>> model = einc.build(arch, input_shape=(3, 32, 32), num_classes=10)   # a torch.fx GraphModule
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from .arch import parse, show
from .ein import compile_ein, load as load_table
from .infer import Inference, infer
from .ops import BUILTIN, Library, feature_for
from .table import RuleTable
from .tree import Expansion


@dataclass(frozen=True, eq=False)
class Grammar:
    """A compiled, checked .ein grammar."""

    table: RuleTable

    @property
    def library(self) -> Library:
        return self.table.library

    @property
    def hash(self) -> str:
        """Content hash of the grammar text: results journals record it."""
        return hashlib.sha256(self.table.source.encode()).hexdigest()[:16]

    def default_shape(self) -> tuple[int, ...] | None:
        return self.table.start.shape

    def parse(self, text: str, input_shape: tuple[int, ...] | None = None) -> "Architecture":
        """Parse a bracket string; with ``input_shape``, also check every shape."""
        mode = feature_for(input_shape).mode if input_shape else None
        arch = Architecture(self, parse(text.strip(), self.table, mode), mode or self.table.start.mode)
        if input_shape is not None:
            infer(arch.tree, self.library, input_shape, text.strip())
        return arch

    def architecture(self, tree: Expansion, mode: str | None = None) -> "Architecture":
        return Architecture(self, tree, mode or self.table.start.mode)


@dataclass(frozen=True, eq=False)
class Architecture:
    """A derivation tree of a grammar, in a given input mode."""

    grammar: Grammar
    tree: Expansion
    mode: str

    @property
    def text(self) -> str:
        """The canonical bracket string."""
        return show(self.tree)

    def __str__(self) -> str:
        return self.text

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Architecture) and other.grammar is self.grammar and other.tree == self.tree

    def __hash__(self) -> int:
        return hash(self.text)

    def infer(self, input_shape: tuple[int, ...]) -> Inference:
        return infer(self.tree, self.grammar.library, input_shape, self.text)


def load(path: str | Path, library: Library = BUILTIN) -> Grammar:
    """Compile a .ein file, or a bundled grammar by name (``"einspace"``)."""
    return Grammar(load_table(path, library))


def compile_grammar(text: str, path: str = "<string>", library: Library = BUILTIN) -> Grammar:
    return Grammar(compile_ein(text, path, library))


def build(arch: Architecture, input_shape: tuple[int, ...], num_classes: int | None = None,
          optimize: bool = True, check: bool = True):
    """A torch.fx GraphModule computing ``arch`` on batches of ``input_shape``.

    ``num_classes`` adds the paper's head (B.1): mean over positions, then a linear layer.
    ``optimize`` applies einc.passes (im2col-linear-col2im becomes Conv2d, ...); ``check``
    runs a batch of 2 and compares the output shape with shape inference (einc.lower).
    """
    from .lower import lower

    return lower(arch, tuple(input_shape), num_classes=num_classes, optimize=optimize, check=check)
