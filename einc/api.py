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
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .derivation import parse
from .ein import compile_ein
from .ein import load as load_table
from .errors import ArchError, EinError
from .infer import Inference, infer
from .key import key as network_key
from .notation import show
from .ops import BUILTIN, Library, feature_for
from .sample import Budget
from .table import RuleTable
from .tree import Expansion

if TYPE_CHECKING:  # torch is imported only when a model is built
    import torch.fx as fx


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

    def _start_mode(self) -> str:
        mode = self.table.start.mode
        assert mode is not None  # a start without a mode is a bad-start error: no such grammar compiles
        return mode

    def check_input(self, input_shape) -> tuple[int, ...]:
        """The shape as a tuple if this grammar can take it as input, else ``InputError``:
        a shape that is not C,H,W or S,D of positive sizes, or a mode the grammar derives
        nothing in (``"the grammar starts in mode Col; the input 3,8,8 is Im: ..."``)."""
        from .checks import check_input

        return check_input(self.table, input_shape)

    def parse(self, text: str, input_shape: tuple[int, ...] | None = None) -> Architecture:
        """Parse a bracket string; with ``input_shape``, also check every shape."""
        if not isinstance(text, str):
            raise ArchError(f"an architecture is a bracket-notation string, not {type(text).__name__}",
                            code="arch-syntax")
        shape = self.check_input(input_shape) if input_shape is not None else None
        mode = feature_for(shape).mode if shape else None
        arch = Architecture(self, parse(text.strip(), self.table, mode), mode or self._start_mode())
        if shape is not None:
            infer(arch.tree, self.library, shape, text.strip())
        return arch

    def architecture(self, tree: Expansion, mode: str | None = None) -> Architecture:
        """Wrap a tree (from ``einc.sample.Sampler``, ``einc.mutate``) for printing and building."""
        if not isinstance(tree, Expansion):
            raise EinError(f"an architecture's tree is an einc.Expansion, not {type(tree).__name__}")
        return Architecture(self, tree, mode or self._start_mode())

    def sample(self, input_shape: tuple[int, ...] | None = None, seed: int | random.Random = 0,
               budget: Budget | None = None) -> Architecture:
        """One architecture drawn by the grammar's probabilities, valid by construction and within
        ``budget`` (default ``einc.Budget()``); ``input_shape`` defaults to the start's shape."""
        from .sample import Sampler

        shape = self.check_input(input_shape if input_shape is not None else self.default_shape())
        rng = seed if isinstance(seed, random.Random) else random.Random(seed)
        tree = Sampler(self.table, shape, budget or Budget()).sample(rng)
        return Architecture(self, tree, feature_for(shape).mode)


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

    @property
    def key(self) -> str:
        """The network's key (einc.key), 16 hex digits: equal for derivations that compute the same
        network (re-associated sequences, branches summed by ``add`` in another order, vanishing
        identities), different when the function differs (op order, ``concat`` order, arguments)."""
        return network_key(self.tree)

    def __str__(self) -> str:
        return self.text

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Architecture) and other.grammar is self.grammar and other.tree == self.tree

    def __hash__(self) -> int:
        return hash(self.text)

    def infer(self, input_shape: tuple[int, ...]) -> Inference:
        """Shapes, parameters and FLOPs on a per-sample input of ``input_shape``: no tensor built."""
        return infer(self.tree, self.grammar.library, self.grammar.check_input(input_shape), self.text)


def load(path: str | Path, library: Library = BUILTIN) -> Grammar:
    """Compile a .ein file, or a bundled grammar by name (``"einspace"``)."""
    return Grammar(load_table(path, library))


def compile_grammar(text: str, path: str = "<string>", library: Library = BUILTIN) -> Grammar:
    return Grammar(compile_ein(text, path, library))


def build(arch: Architecture, input_shape: tuple[int, ...], num_classes: int | None = None,
          optimize: bool = True, check: bool = True, device: str | None = None,
          output_shape: tuple[int, ...] | None = None) -> fx.GraphModule:
    """A torch.fx GraphModule computing ``arch`` on batches of ``input_shape``.

    The stages, in order: the input's mode must be the one ``arch`` was parsed for; einc.lower
    builds the graph; with ``optimize``, einc.passes rewrites it exactly (im2col-linear-col2im
    becomes Conv2d, equal branches are batched, ...), choosing where batching pays by the cost
    model of ``device`` ("cpu", "cuda"; None: cuda if available, as einc.runtime trains); with
    ``check``, a batch of 2 runs and its output shape is compared with shape inference
    (einc.verify). ``num_classes`` adds the paper's head (B.1): mean over positions, then a
    linear layer. ``output_shape`` picks the head by what it outputs per sample: ``(K,)`` is that
    head with K outputs (classes, labels or regression values); ``(C', H', W')`` or ``(S', D')``
    is the paper's dense head, the features average-pooled adaptively to the target's positions
    and a linear map of channels to C' (D'): ``einc.build(arch, (1, 85, 85),
    output_shape=(1, 85, 85))`` for Darcy Flow.
    """
    from .errors import LoweringError
    from .lower import lower
    from .meta import INFO
    from .passes import optimize as run_passes
    from .verify import check_shapes

    if not isinstance(arch, Architecture):
        raise EinError(f"build takes an einc.Architecture, not {type(arch).__name__}"
                       + ("; wrap a sampled tree as grammar.architecture(tree)" if isinstance(arch, Expansion) else ""))
    arch.grammar.check_input(input_shape)
    shape = tuple(input_shape)
    mode = feature_for(shape).mode
    if mode != arch.mode:
        raise LoweringError(f"the architecture was parsed for {arch.mode} inputs; {shape} is a "
                            f"{mode} input (parse it with this input shape)")
    gm = lower(arch.tree, arch.grammar.library, shape, num_classes=num_classes, text=arch.text,
               output_shape=output_shape)
    if optimize:
        run_passes(gm, device=device)
    if check:
        check_shapes(gm, shape, gm.meta[INFO]["output_shape"])
    return gm
