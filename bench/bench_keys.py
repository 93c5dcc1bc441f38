"""How many candidates repeat a network already proposed: by their string, and by their key (einc.key).

    python bench/bench_keys.py                 # 1,000 einspace samples and 1,000 evolution children
    python bench/bench_keys.py -n 300 --seed 1

1. ``n`` samples of einspace at (3, 32, 32) with the CLI's default budget (``einc.Budget()``).
2. An evolution run's children, untrained: a population of 100 samples (the search's default),
   then ``n`` children, each a mutation (``einc.mutate.mutate``) of a parent drawn at random (no
   fitness without training; the tournament would pick by it), joining the population as the
   oldest leaves (regularised evolution's ageing).

A candidate is a repeat when an earlier one (sample, population member or child) had the same
string, or the same key. The search (runtime/schedule.py) does not train a repeat by key. Also
printed: the mean time to print a candidate's string and to compute its key, side by side.
"""

from __future__ import annotations

import argparse
import random
import time
from collections import deque
from collections.abc import Iterable

import einc
from einc.key import key
from einc.mutate import mutate
from einc.notation import show
from einc.sample import Budget, Sampler, SamplingError
from einc.tree import Expansion

SHAPE = (3, 32, 32)
POPULATION = 100


def repeats(trees: Iterable[Expansion], seen_text: set[str], seen_key: set[str]) -> tuple[int, int, int, float, float]:
    """(candidates, repeats by string, repeats by key, seconds printing, seconds keying)."""
    n = by_text = by_key = 0
    t_text = t_key = 0.0
    for tree in trees:
        t = time.perf_counter()
        text = show(tree)
        t_text += time.perf_counter() - t
        t = time.perf_counter()
        k = key(tree)
        t_key += time.perf_counter() - t
        n += 1
        by_text += text in seen_text
        by_key += k in seen_key
        seen_text.add(text)
        seen_key.add(k)
    return n, by_text, by_key, t_text, t_key


def children(sampler: Sampler, rng: random.Random, population: list[Expansion], n: int):
    """``n`` mutations of random members of an ageing population (evolution without fitness)."""
    alive = deque(population)
    made = 0
    while made < n:
        try:
            child = mutate(rng.choice(alive), sampler, rng)
        except SamplingError:
            continue
        alive.append(child)
        alive.popleft()
        made += 1
        yield child


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=1000, help="samples, and evolution children (default 1000)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    g = einc.load("einspace")
    sampler = Sampler(g.table, SHAPE, Budget())
    rng = random.Random(args.seed)
    rows = []
    samples = [sampler.sample(rng) for _ in range(args.n)]
    rows.append((f"{args.n} einspace samples", *repeats(samples, set(), set())))
    population = [sampler.sample(rng) for _ in range(POPULATION)]
    seen_text, seen_key = set(), set()
    repeats(population, seen_text, seen_key)
    rows.append((f"{args.n} evolution children", *repeats(children(sampler, rng, population, args.n),
                                                          seen_text, seen_key)))
    print(f"einspace at {','.join(map(str, SHAPE))}, einc.Budget() defaults, seed {args.seed}")
    print(f"{'candidates':28s} {'by string':>10s} {'by key':>8s} {'string us':>10s} {'key us':>8s} {'key/string':>10s}")
    for name, n, by_text, by_key, t_text, t_key in rows:
        print(f"{name:28s} {by_text:10d} {by_key:8d} {1e6 * t_text / n:10.1f} {1e6 * t_key / n:8.1f} "
              f"{t_key / t_text:10.2f}")


if __name__ == "__main__":
    main()
