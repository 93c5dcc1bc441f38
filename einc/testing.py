"""Hypothesis strategies over a grammar's architectures, for property-testing your own code.

    from hypothesis import given
    import einc, einc.testing

    g = einc.load("einspace")

    @given(einc.testing.architectures(g, input_shape=(3, 32, 32)))
    def test_my_code_accepts_every_architecture(arch):
        assert arch.infer((3, 32, 32)).output

Every drawn architecture is a valid derivation within the budget; failing examples shrink
towards small trees (the sampler offers the alternatives with fewest nonterminals first).
The default budget, ``SMALL``, keeps networks small; a grammar whose smallest network exceeds
it needs ``budget=einc.Budget(...)`` with larger limits, and ``architectures`` says so at once
(rather than Hypothesis failing a health check).
"""

from __future__ import annotations

import random

from hypothesis import strategies as st

from .api import Architecture, Grammar
from .errors import EinError
from .ops import feature_for
from .sample import Budget, Chooser, Sampler, SamplingError

SMALL = Budget(max_params=2_000_000, max_flops=200_000_000, max_activations=1_000_000, max_nodes=200,
               max_depth=40)
"""The default budget for property tests: small networks that build and run quickly."""


def architectures(grammar: Grammar, input_shape: tuple[int, ...] | None = None,
                  budget: Budget = SMALL) -> st.SearchStrategy[Architecture]:
    """Architectures of ``grammar`` for inputs of ``input_shape`` (default: the start's), each
    within ``budget``. Raises ``EinError`` at once if no architecture fits the budget."""
    if input_shape is None and grammar.default_shape() is None:
        raise EinError("give input_shape: the grammar's start declares no default shape")
    shape = grammar.check_input(input_shape if input_shape is not None else grammar.default_shape())
    sampler = Sampler(grammar.table, shape, budget, small_first=True)
    mode = feature_for(shape).mode
    _fits(sampler, budget)

    @st.composite
    def draw_architecture(draw) -> Architecture:
        def choose(weights) -> int:
            return draw(st.integers(0, len(weights) - 1))

        return grammar.architecture(sampler.sample(choose), mode)

    return draw_architecture()


def _fits(sampler: Sampler, budget: Budget) -> None:
    """Find one tree within the budget before Hypothesis starts, or say that none fits."""
    def first(weights) -> int:  # the smallest alternatives first, as Hypothesis shrinks
        return 0

    rngs: tuple[random.Random | Chooser, ...] = (first, *(random.Random(i) for i in range(3)))
    for rng in rngs:
        try:
            sampler.sample(rng)
            return
        except SamplingError:
            continue
    who = "einc.testing.SMALL" if budget == SMALL else "the given budget"
    raise EinError(f"no architecture of the grammar within {who} ({budget}) was found for input "
                   f"{','.join(map(str, sampler.input[0].shape))}; pass budget=einc.Budget(...) with larger limits")
