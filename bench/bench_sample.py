"""Sampler speed and the size distribution next to the paper's Table 6.

    python bench/bench_sample.py [--n 2000]

Prints samples/second and median/p99 time per sample at (3, 32, 32) and (1, 28, 28), time per
mutation, and the Table-6 statistics (min/mean/median/std/max of terminals, module
nonterminals and branching factor) at p(M -> C) in {0.9, ..., 0.5} beside the paper's values,
with the PCFG's own expectation. "terminals" counts a repeated subtree once (the derivation);
"network ops" counts it once per copy, which is what a sampler that deep-copies repeated
subtrees (the published one) would count; both are shown next to the paper's terminals.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import einc
from einc.mutate import mutate
from einc.pcfg import analyse
from einc.sample import Budget, Sampler, with_stop_probability
from einc.stats import five_numbers
from einc.tree import Expansion, counts, walk

# Paper Table 6 (2000 samples each): (min, mean, median, std, max)
PAPER = {
    "terminals": {0.9: (2, 3.87, 3, 2.84, 28), 0.8: (2, 5.34, 4, 6.32, 54), 0.7: (2, 6.72, 4, 11.22, 118),
                  0.6: (2, 8.65, 4, 16.73, 202), 0.5: (2, 40.22, 5, 303.65, 4779)},
    "non-terminals": {0.9: (2, 3.63, 3, 3.45, 42), 0.8: (2, 5.04, 3, 6.91, 64), 0.7: (2, 6.00, 3, 9.21, 81),
                      0.6: (2, 7.74, 4, 13.61, 165), 0.5: (2, 39.03, 5, 325.18, 5219)},
    "branching factor": {0.9: (1, 1.75, 1, 1.63, 7.61), 0.8: (1, 2.05, 1, 1.95, 7.73), 0.7: (1, 2.05, 1, 1.91, 7.83),
                         0.6: (1, 2.17, 1, 1.96, 7.73), 0.5: (1, 2.34, 1, 2.00, 7.88)},
}


def timing(g, shape, n):
    s = Sampler(g.table, shape)
    rng = random.Random(0)
    times, trees = [], []
    t_all = time.perf_counter()
    for _ in range(n):
        t0 = time.perf_counter()
        trees.append(s.sample(rng))
        times.append(time.perf_counter() - t0)
    total = time.perf_counter() - t_all
    times.sort()
    muts = []
    for t in trees[:200]:
        t0 = time.perf_counter()
        mutate(t, s, rng)
        muts.append(time.perf_counter() - t0)
    print(f"input {','.join(map(str, shape)):>8s}: {n / total:8.0f} samples/s   "
          f"median {1e3 * statistics.median(times):.3f} ms"
          f"   p99 {1e3 * times[int(0.99 * n)]:.2f} ms   max {1e3 * times[-1]:.1f} ms   "
          f"mutation median {1e3 * statistics.median(muts):.2f} ms")


def modules(tree: Expansion) -> int:
    """Module nonterminals (S and M nodes): how the paper's Table 6 appears to count them."""
    return sum(1 for _, n in walk(tree) if isinstance(n, Expansion) and n.head in ("S", "M"))


def table6(g, n):
    # No practical budget, as in the paper's sampler (it had only a depth limit of 100).
    budget = Budget(max_params=10**12, max_flops=10**15, max_activations=10**12, max_nodes=100_000, max_depth=100)
    print(f"\nTable 6 at input 3,32,32, {n} samples each (ours | paper): min mean median std max")
    for p in (0.9, 0.8, 0.7, 0.6, 0.5):
        s = Sampler(with_stop_probability(g.table, p), (3, 32, 32), budget)
        rng = random.Random(0)
        trees = [s.sample(rng) for _ in range(n)]
        expected = analyse(s.table, "Im")
        print(f"  p={p}: PCFG expectation (no shape filtering): {expected.expected_terminals:.2f} derivation "
              f"terminals, {expected.network_terminals:.2f} network ops; sampled means below")
        rows = {"terminals": [counts(t).terminals for t in trees],
                "network ops": [counts(t).network_ops for t in trees],
                "non-terminals": [modules(t) for t in trees],
                "branching factor": [statistics.fmean(counts(t).branching) if counts(t).branching else 1.0
                                     for t in trees]}
        for name, values in rows.items():
            ours = five_numbers(values)
            paper = PAPER.get(name, PAPER["terminals"] if name == "network ops" else {}).get(p)
            print(f"  p={p} {name:17s} " + " ".join(f"{ours[k]:8.2f}" for k in ("min", "mean", "median", "std", "max"))
                  + ("  | " + " ".join(f"{v:8.2f}" for v in paper) if paper else ""))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    args = ap.parse_args()
    g = einc.load("einspace")
    for shape in ((3, 32, 32), (1, 28, 28)):
        timing(g, shape, args.n)
    table6(g, args.n)


if __name__ == "__main__":
    main()
