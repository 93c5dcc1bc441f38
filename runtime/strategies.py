"""Search strategies as pure proposal machines: no training, no files, no clocks.

A strategy proposes architectures and is told their fitness (validation accuracy, or None
for a failed evaluation), in proposal order. Its only randomness is the ``random.Random`` it
is given, so the same seed and the same fitnesses give the same proposals: that is what lets
a killed search resume by replaying its journal (runtime/search.py).
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass
from typing import Protocol

from einc.mutate import mutate
from einc.sample import Sampler, SamplingError
from einc.tree import Expansion


@dataclass(frozen=True)
class Proposal:
    tree: Expansion
    parent: int | None  # index of the evaluation it was mutated from
    origin: str  # "seed" | "sample" | "mutation"


class Strategy(Protocol):
    name: str

    def propose(self) -> Proposal: ...

    def observe(self, index: int, tree: Expansion, fitness: float | None) -> None: ...


class RandomSearch:
    """K independent samples from the grammar; the best on validation wins (paper 4.2).

    As ``sample`` (random sampling) the same proposals are reported by their mean instead.
    """

    def __init__(self, sampler: Sampler, rng: random.Random, name: str = "rs"):
        self.sampler, self.rng, self.name = sampler, rng, name

    def propose(self) -> Proposal:
        return Proposal(self.sampler.sample(self.rng), None, "sample")

    def observe(self, index: int, tree: Expansion, fitness: float | None) -> None:
        pass


@dataclass(frozen=True)
class Member:
    index: int
    tree: Expansion
    fitness: float | None


class RegularisedEvolution:
    """Regularised (ageing) evolution, paper 4.1: population P, tournament T.

    The first P proposals fill the population: copies of the seed architectures in turn, or
    random samples when there are none. After that, each proposal is a mutation of the
    fittest of T members drawn with replacement; each observed child joins the population
    and the oldest member leaves. A failed evaluation has no fitness and loses every
    tournament it meets against one that has.
    """

    name = "re"

    def __init__(self, sampler: Sampler, rng: random.Random, population: int = 100, tournament: int = 10,
                 seeds: tuple[Expansion, ...] = ()):
        if population < 1 or not 1 <= tournament:
            raise ValueError("population and tournament sizes must be positive")
        self.sampler, self.rng = sampler, rng
        self.size, self.tournament, self.seeds = population, tournament, tuple(seeds)
        self.population: deque[Member] = deque()
        self.proposed = 0

    def propose(self) -> Proposal:
        k = self.proposed
        self.proposed += 1
        if k < self.size:
            if self.seeds:
                return Proposal(self.seeds[k % len(self.seeds)], None, "seed")
            return Proposal(self.sampler.sample(self.rng), None, "sample")
        if not self.population:
            raise RuntimeError("propose() after the initial population needs observe() of it")
        for _ in range(3):
            contenders = [self.rng.choice(self.population) for _ in range(self.tournament)]
            parent = max(contenders, key=lambda m: -1.0 if m.fitness is None else m.fitness)
            try:
                return Proposal(mutate(parent.tree, self.sampler, self.rng), parent.index, "mutation")
            except SamplingError:
                continue  # a parent with no valid mutation in reach: hold another tournament
        return Proposal(self.sampler.sample(self.rng), None, "sample")

    def observe(self, index: int, tree: Expansion, fitness: float | None) -> None:
        self.population.append(Member(index, tree, fitness))
        if len(self.population) > self.size:
            self.population.popleft()  # the oldest dies, however fit
