"""Hypothesis strategies over a grammar's architectures, for property-testing your own code.

    from hypothesis import given
    import einc, einc.testing

    g = einc.load("einspace")

    @given(einc.testing.architectures(g, input_shape=(3, 32, 32)))
    def test_my_code_accepts_every_architecture(arch):
        assert arch.infer((3, 32, 32)).output

Every drawn architecture is a valid derivation within the budget; failing examples shrink
towards small trees (the sampler offers the alternatives with fewest nonterminals first).
"""

from __future__ import annotations

from hypothesis import strategies as st

from .api import Architecture, Grammar
from .ops import feature_for
from .sample import Budget, Sampler

SMALL = Budget(max_params=2_000_000, max_flops=200_000_000, max_activations=1_000_000, max_nodes=200,
               max_depth=40)
"""The default budget for property tests: small networks that build and run quickly."""


def architectures(grammar: Grammar, input_shape: tuple[int, ...] | None = None,
                  budget: Budget = SMALL) -> st.SearchStrategy[Architecture]:
    shape = tuple(input_shape or grammar.default_shape() or ())
    if not shape:
        raise ValueError("give input_shape: the grammar's start declares no default shape")
    sampler = Sampler(grammar.table, shape, budget, small_first=True)
    mode = feature_for(shape).mode

    @st.composite
    def draw_architecture(draw) -> Architecture:
        def choose(weights) -> int:
            return draw(st.integers(0, len(weights) - 1))

        return grammar.architecture(sampler.sample(choose), mode)

    return draw_architecture()
