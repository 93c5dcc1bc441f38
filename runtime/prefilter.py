"""Evolution that trains only the most promising of several children (``--prefilter M``).

Each proposal after the initial population draws ``M`` children as regularised evolution would
(a tournament and a mutation each) and proposes the one a surrogate predicts to score best,
as Qin et al. (AutoML-Conf 2025) filter einspace's mutations. The surrogate is the Gaussian
process of runtime/surrogate.py, fitted online to every score the search has been told (the
first rung's, under multi-fidelity: what a new child will be measured at), ranking by its mean.
Its features are the derivation tree's Weisfeiler-Lehman subtrees (depth 0: the op counts) and,
in a search on data, the child's synflow (``PROXY``), which the GP weighs against the WL kernel by
evidence. The proxy is computed in the search's process, deterministically (runtime/zero_cost.py),
so the strategy stays a function of its seed and its observations; it costs one network build
and one forward and backward pass on one sample per child.

Until some evaluation has succeeded there is nothing to learn from, and the first child is
proposed, as plain evolution would.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from einc.key import key as network_key
from einc.sample import Sampler
from einc.tree import Expansion

from .goal import Score
from .strategies import Avoid, Proposal, RegularisedEvolution
from .surrogate import Model, Observed
from .zero_cost import scorer

PROXY = "synflow"
"""The proxy among the surrogate's features: data-free (one input of ones), so as cheap as a proxy gets;
on digits10 a GP on WL and synflow ranked 577 trained networks at Spearman 0.50-0.59 from 10-40 of
them, WL alone at 0.16-0.30."""


def _never(tree: Expansion) -> bool:
    return False


def proxy_for(grammar: Any, data: Any, seed: int, batch: int) -> Callable[[Expansion], float] | None:
    """The surrogate's proxy feature for a search on ``data``; None without data (WL features alone)."""
    return None if data is None else scorer(PROXY, grammar, data, seed, batch)


class PrefilteredEvolution(RegularisedEvolution):
    """Regularised evolution whose every child is the surrogate's pick among ``children`` drawn."""

    def __init__(self, sampler: Sampler, rng: random.Random, population: int = 100, tournament: int = 10,
                 seeds: tuple[Expansion, ...] = (), children: int = 8, key: Callable[[Expansion], str] = network_key,
                 proxy: Callable[[Expansion], float] | None = None, model: Model | None = None):
        super().__init__(sampler, rng, population, tournament, seeds)
        if children < 1:
            raise ValueError("children must be positive")
        self.children, self.key, self.observed = children, key, Observed(key, model or Model(proxy=proxy))

    def propose(self, avoid: Avoid = _never) -> Proposal:
        if self.proposed < self.size or self.children == 1 or not self.observed.any():
            return super().propose(avoid)
        self.proposed += 1
        drawn: list[Proposal] = []
        keys: set[str] = set()
        for _ in range(self.children):
            p = self.child(avoid)
            key = self.key(p.tree)
            if key not in keys:
                keys.add(key)
                drawn.append(p)
        fresh = [p for p in drawn if not avoid(p.tree)] or drawn[:1]  # all repeats: the scheduler reuses the first
        if len(fresh) == 1:
            return fresh[0]
        mean, _ = self.observed.fitted().predict([p.tree for p in fresh])
        return fresh[int(mean.argmax())]  # the first of equal predictions

    def observe(self, index: int, tree: Expansion, fitness: Score | None) -> None:
        super().observe(index, tree, fitness)
        self.observed.add(tree, None if fitness is None else fitness[1])
