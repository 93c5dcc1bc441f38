"""Search strategies as pure proposal machines: no training, no files, no clocks.

A strategy proposes architectures and is told their score (``runtime.goal.Score``: rung, then the
search's metric oriented so that larger is better; None for a failed evaluation) in proposal
order, with a lag (runtime/schedule.py). Its only randomness is the ``random.Random`` it is
given, so the same seed and the same sequence of proposals and observations give the same
proposals: that is what lets a killed search resume by replaying its journal
(runtime/schedule.py).
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from einc.mutate import mutate
from einc.sample import Sampler, SamplingError
from einc.tree import Expansion

from .goal import Score

Avoid = Callable[[Expansion], bool]
"""True for a tree the search has already proposed (evaluated or in flight)."""

RETRIES = 20
"""How often a strategy redraws a proposal that would repeat an architecture already proposed."""


def _never(tree: Expansion) -> bool:
    return False


@dataclass(frozen=True)
class Proposal:
    tree: Expansion
    parent: int | None  # index of the evaluation it was mutated from
    origin: str  # "seed" | "sample" | "mutation"
    retries: int = 0  # draws rejected because they repeated an architecture already proposed


class RandomSearch:
    """K independent samples from the grammar; the best on validation wins (paper 4.2).

    As ``sample`` (random sampling) the same proposals are reported by their mean instead, so
    repeats are not redrawn there: a repeated sample is part of the distribution being estimated.
    """

    def __init__(self, sampler: Sampler, rng: random.Random, name: str = "rs"):
        self.sampler, self.rng, self.name = sampler, rng, name

    def ready(self) -> bool:
        return True

    def propose(self, avoid: Avoid = _never) -> Proposal:
        tree = self.sampler.sample(self.rng)
        retries = 0
        while self.name == "rs" and retries < RETRIES and avoid(tree):
            retries += 1
            tree = self.sampler.sample(self.rng)
        return Proposal(tree, None, "sample", retries)

    def observe(self, index: int, tree: Expansion, fitness: Score | None) -> None:
        pass

    def rescore(self, index: int, fitness: Score | None) -> None:
        pass


@dataclass(frozen=True)
class Member:
    index: int
    tree: Expansion
    fitness: Score | None


class RegularisedEvolution:
    """Regularised (ageing) evolution, paper 4.1: population P, tournament T.

    The first P proposals fill the population: copies of the seed architectures in turn, or
    random samples when there are none. After that, each proposal is a mutation of the
    fittest of T members drawn with replacement from the members observed so far (steady
    state: no generation waits for its slowest member); each observed child joins the
    population and the oldest member leaves. A failed evaluation has no fitness and loses every
    tournament it meets against one that has. A child that repeats an architecture already
    proposed is redrawn (a new tournament and mutation), up to ``RETRIES`` times.
    """

    name = "re"

    def __init__(self, sampler: Sampler, rng: random.Random, population: int = 100, tournament: int = 10,
                 seeds: tuple[Expansion, ...] = ()):
        if population < 1 or not tournament >= 1:
            raise ValueError("population and tournament sizes must be positive")
        self.sampler, self.rng = sampler, rng
        self.size, self.tournament, self.seeds = population, tournament, tuple(seeds)
        self.population: deque[Member] = deque()
        self.proposed = 0

    def ready(self) -> bool:
        """False while the initial population is proposed but none of it observed yet."""
        return self.proposed < self.size or bool(self.population)

    def propose(self, avoid: Avoid = _never) -> Proposal:
        k = self.proposed
        self.proposed += 1
        if k < self.size:
            if self.seeds:  # copies are deliberate (the paper seeds the whole population)
                return Proposal(self.seeds[k % len(self.seeds)], None, "seed")
            return RandomSearch(self.sampler, self.rng).propose(avoid)
        return self.child(avoid)

    def child(self, avoid: Avoid = _never) -> Proposal:
        """A mutation of a tournament's winner (runtime/prefilter.py draws several and keeps one)."""
        if not self.population:
            raise RuntimeError("propose() after the initial population needs observe() of some of it")
        retries = failures = 0
        while retries <= RETRIES and failures < 3:
            contenders = [self.rng.choice(self.population) for _ in range(self.tournament)]
            parent = max(contenders, key=lambda m: (m.fitness is not None, m.fitness or (0, 0.0)))
            try:
                child = mutate(parent.tree, self.sampler, self.rng)
            except SamplingError:
                failures += 1  # a parent with no valid mutation in reach: hold another tournament
                continue
            if not avoid(child) or retries == RETRIES:
                return Proposal(child, parent.index, "mutation", retries)
            retries += 1
        return Proposal(self.sampler.sample(self.rng), None, "sample", retries)

    def rescore(self, index: int, fitness: Score | None) -> None:
        """A member was trained again for longer (multi-fidelity): it competes with its new score, if still alive."""
        for k, m in enumerate(self.population):
            if m.index == index and fitness is not None:
                self.population[k] = Member(index, m.tree, fitness)

    def observe(self, index: int, tree: Expansion, fitness: Score | None) -> None:
        self.population.append(Member(index, tree, fitness))
        if len(self.population) > self.size:
            self.population.popleft()  # the oldest dies, however fit
