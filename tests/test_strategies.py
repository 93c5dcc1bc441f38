"""Search strategies on a fake fitness (no training): exact, deterministic for a seed."""

from __future__ import annotations

import random
import zlib

import pytest

import einc
from einc.notation import show
from einc.runtime.strategies import RandomSearch, RegularisedEvolution
from einc.sample import Sampler
from einc.tree import counts

G = einc.load("einspace")
SHAPE = (3, 16, 16)


def fake_fitness(tree) -> tuple[int, float] | None:
    """A Score (rung, value), as strategies are told; crc32, not hash(): str hashes differ per process."""
    c = counts(tree)
    if c.terminals % 7 == 0:
        return None  # some evaluations "fail"
    return 0, (zlib.crc32(show(tree).encode()) % 1000) / 1000


class RecordingRandom(random.Random):
    """Logs what ``choice`` returns, to check tournaments from outside."""

    def __init__(self, seed):
        super().__init__(seed)
        self.chosen = []

    def choice(self, seq):
        x = super().choice(seq)
        self.chosen.append(x)
        return x


def run_re(seed, steps=60, population=8, tournament=3, seeds=()):
    rng = RecordingRandom(seed)
    re = RegularisedEvolution(Sampler(G.table, SHAPE), rng, population, tournament, seeds)
    history = []
    for i in range(steps):
        before = len(rng.chosen)
        prop = re.propose()
        contenders = rng.chosen[before:]
        fit = fake_fitness(prop.tree)
        history.append((show(prop.tree), prop.parent, prop.origin, [m.index for m in contenders],
                        [m.fitness for m in contenders]))
        re.observe(i, prop.tree, fit)
        assert [m.index for m in re.population] == list(range(max(0, i + 1 - population), i + 1))
    return history


def test_population_tournament_and_ageing_are_exact():
    history = run_re(0)
    for i, (text, parent, origin, contenders, fits) in enumerate(history):
        if i < 8:
            assert origin == "sample" and parent is None and contenders == []
            continue
        assert origin == "mutation" and len(contenders) == 3
        # contenders are drawn from the population alive at proposal time: the last 8 observed
        assert all(i - 8 <= c < i for c in contenders)
        best = max(range(3), key=lambda k: (0, -1.0) if fits[k] is None else fits[k])
        assert parent == contenders[best]
        assert text != history[parent][0]  # a mutation differs from its parent


def test_same_seed_same_search_and_different_seed_differs():
    assert run_re(5, steps=30) == run_re(5, steps=30)
    assert run_re(5, steps=30) != run_re(6, steps=30)


def test_seeded_population_cycles_the_seeds():
    seeds = tuple(G.parse(s).tree for s in ("sequential(relu, norm)", "sequential(norm, relu)"))
    history = run_re(1, steps=12, population=6, seeds=seeds)
    assert [h[0] for h in history[:6]] == ["sequential(relu, norm)", "sequential(norm, relu)"] * 3
    assert all(h[2] == "seed" for h in history[:6]) and all(h[2] == "mutation" for h in history[6:])


def test_failed_evaluations_lose_tournaments():
    rng = random.Random(0)
    s = Sampler(G.table, SHAPE)
    re = RegularisedEvolution(s, rng, population=4, tournament=4)
    trees = [re.propose().tree for _ in range(4)]
    for i, t in enumerate(trees):
        re.observe(i, t, None if i != 2 else (0, 0.1))
    parents = {re.propose().parent for _ in range(20)}
    # a tournament of 4 drawn with replacement from 4 members usually contains member 2
    assert 2 in parents and parents <= {0, 1, 2, 3}


def test_random_search_is_deterministic_and_independent_of_fitness():
    a = RandomSearch(Sampler(G.table, SHAPE), random.Random(3))
    b = RandomSearch(Sampler(G.table, SHAPE), random.Random(3))
    xs = []
    for i in range(20):
        pa, pb = a.propose(), b.propose()
        a.observe(i, pa.tree, (0, 0.5))
        b.observe(i, pb.tree, None)
        assert pa.tree == pb.tree and pa.parent is None
        xs.append(show(pa.tree))
    assert len(set(xs)) > 15


def test_bad_sizes_are_rejected():
    with pytest.raises(ValueError):
        RegularisedEvolution(Sampler(G.table, SHAPE), random.Random(0), population=0)
