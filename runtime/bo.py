"""Bayesian optimisation over derivation trees (``--strategy bo``), as Schrodi et al. search
their hierarchical grammars (BOHNAS) and Ru et al. search cells (NAS-BOWL): a Gaussian process
with a Weisfeiler-Lehman kernel (runtime/surrogate.py) models the score of a tree, and each
proposal is the candidate of highest expected improvement among mutants of the best trees so far
and a few fresh samples.

* The first ``INITIAL`` proposals are the seeds, then random samples: the model needs data.
* Multi-fidelity: the model is fitted to the first rung's scores, the rung every proposal is
  trained at, so expected improvement is over what the proposal's own evaluation will measure;
  successive halving promotes, and a promoted tree's higher-rung score ranks it among the
  incumbents that are mutated (runtime/schedule.py).
* Lag: proposals in flight are believed at their predicted means (the kriging believer), so the
  next proposal looks elsewhere; a candidate already proposed is never proposed again.
* A failed evaluation counts as the worst score seen: the model learns to avoid what fails.

Like every strategy it is a pure function of its ``random.Random`` and what it has been told
(runtime/strategies.py), so a resumed search proposes exactly what the killed one did.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable

from einc.key import key as network_key
from einc.mutate import mutate
from einc.sample import Sampler, SamplingError
from einc.tree import Expansion

from .goal import Score
from .strategies import Avoid, Proposal, RandomSearch
from .surrogate import Model, Observed

INITIAL = 10
"""Proposals before the model decides: the seeds, then random samples."""

MUTANTS = 40
"""Candidates per proposal made by mutating the incumbents."""

FRESH = 10
"""Candidates per proposal sampled afresh from the grammar (exploration beyond the incumbents' reach)."""

INCUMBENTS = 5
"""The best trees so far (by score: higher rung first) whose mutants are candidates."""


def _never(tree: Expansion) -> bool:
    return False


class BayesianOptimisation:
    """WL-kernel GP with expected improvement, maximised over mutants of the incumbents."""

    name = "bo"

    def __init__(self, sampler: Sampler, rng: random.Random, seeds: tuple[Expansion, ...] = (),
                 initial: int = INITIAL, mutants: int = MUTANTS, fresh: int = FRESH,
                 incumbents: int = INCUMBENTS, key: Callable[[Expansion], str] = network_key,
                 model: Model | None = None):
        if initial < 1 or mutants + fresh < 1 or incumbents < 1:
            raise ValueError("initial, candidates and incumbents must be positive")
        self.sampler, self.rng, self.seeds = sampler, rng, tuple(seeds)
        self.size, self.mutants, self.fresh, self.incumbents = initial, mutants, fresh, incumbents
        self.key, self.observed = key, Observed(key, model)
        self.proposed = 0
        self.pending: deque[Expansion] = deque()    # proposed, not yet observed, in proposal order
        self.scores: dict[int, tuple[Score, Expansion]] = {}  # index -> best score so far, tree

    def ready(self) -> bool:
        """False once the initial design is out and nothing of it is observed yet."""
        return self.proposed < self.size or bool(self.observed.trees)

    def propose(self, avoid: Avoid = _never) -> Proposal:
        k = self.proposed
        self.proposed += 1
        if k < len(self.seeds):
            p = Proposal(self.seeds[k], None, "seed")
        elif k < self.size or not self.observed.any():
            p = RandomSearch(self.sampler, self.rng).propose(avoid)
        else:
            p = self._best_candidate(avoid)
        self.pending.append(p.tree)
        return p

    def _best_candidate(self, avoid: Avoid) -> Proposal:
        ranked = sorted(self.scores.items(), key=lambda kv: (kv[1][0], -kv[0]), reverse=True)[:self.incumbents]
        candidates: list[Proposal] = []
        keys = {self.key(t) for t in self.pending}
        for i in range(self.mutants + self.fresh):
            try:
                if i < self.mutants:
                    index, (_, parent) = ranked[i % len(ranked)]
                    p = Proposal(mutate(parent, self.sampler, self.rng), index, "mutation")
                else:
                    p = Proposal(self.sampler.sample(self.rng), None, "sample")
            except SamplingError:
                continue
            key = self.key(p.tree)
            if key not in keys and key not in self.observed.seen and not avoid(p.tree):
                keys.add(key)
                candidates.append(p)
        if not candidates:
            return RandomSearch(self.sampler, self.rng).propose(avoid)
        ei = self.observed.fitted().expected_improvement([p.tree for p in candidates], tuple(self.pending))
        return candidates[int(ei.argmax())]  # the first of equal maxima

    def observe(self, index: int, tree: Expansion, fitness: Score | None) -> None:
        self.pending.popleft()
        # a repeat's score is its original's: nothing new to learn, and no second incumbent
        if self.observed.add(tree, None if fitness is None else fitness[1]) and fitness is not None:
            self.scores[index] = (fitness, tree)

    def rescore(self, index: int, fitness: Score | None) -> None:
        """A tree trained again at a higher rung competes among the incumbents with that score."""
        if fitness is not None and index in self.scores:
            self.scores[index] = (fitness, self.scores[index][1])
