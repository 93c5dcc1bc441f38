"""Evolution that trains only the most promising of several children (``--prefilter M``).

Each proposal after the initial population draws ``M`` children as regularised evolution would
(a tournament and a mutation each) and proposes the one a surrogate predicts to score best,
as Qin et al. (AutoML-Conf 2025) filter einspace's mutations. The surrogate is the WL-kernel
Gaussian process of runtime/surrogate.py, fitted online to every score the search has been told
(the first rung's, under multi-fidelity: what a new child will be measured at), ranking by its
mean. Its features are the derivation tree's Weisfeiler-Lehman subtrees, whose depth 0 is the
op counts. Zero-cost proxies are not among them: they need the network built and run on data,
which a strategy (a pure function of its seed and its observations) does not do; ``--warmup``
uses them before the search instead (runtime/warmup.py).

Until some evaluation has succeeded there is nothing to learn from, and the first child is
proposed, as plain evolution would.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from einc.key import key as network_key
from einc.sample import Sampler
from einc.tree import Expansion

from .goal import Score
from .strategies import Avoid, Proposal, RegularisedEvolution
from .surrogate import Model, Observed


def _never(tree: Expansion) -> bool:
    return False


class PrefilteredEvolution(RegularisedEvolution):
    """Regularised evolution whose every child is the surrogate's pick among ``children`` drawn."""

    def __init__(self, sampler: Sampler, rng: random.Random, population: int = 100, tournament: int = 10,
                 seeds: tuple[Expansion, ...] = (), children: int = 8, key: Callable[[Expansion], str] = network_key,
                 model: Model | None = None):
        super().__init__(sampler, rng, population, tournament, seeds)
        if children < 1:
            raise ValueError("children must be positive")
        self.children, self.key, self.observed = children, key, Observed(key, model)

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
