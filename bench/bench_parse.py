"""Parsing throughput of bracket strings: the hand-written fast path against the Lark specification.

    python bench/bench_parse.py

Strings are sampled from einspace and grouped by token count (100-1000 tokens); for each
group it prints strings/second for the syntax stage by Lark (grammar/arch.lark) and by the
hand-written parser, and for the full parse (syntax + resolution against the grammar).
"""

from __future__ import annotations

import random
import time

import einc
from einc.derivation import _parse_cached, parse
from einc.notation import _tokens, parse_syntax, parse_syntax_lark, show
from einc.sample import Budget, Sampler

GROUPS = ((100, 250), (250, 500), (500, 1000))


def rate(fn, strings, min_seconds=1.0) -> float:
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < min_seconds:
        for s in strings:
            fn(s)
        n += len(strings)
    return n / (time.perf_counter() - t0)


def main() -> None:
    g = einc.load("einspace")
    sampler = Sampler(g.table, (3, 64, 64), Budget(max_nodes=3000, max_activations=10**9, max_flops=10**13,
                                                   max_params=10**10))
    rng = random.Random(0)
    groups = {k: [] for k in GROUPS}
    while any(len(v) < 30 for v in groups.values()):
        text = show(sampler.sample(rng))
        n = len(_tokens(text)) - 1
        for lo, hi in GROUPS:
            if lo <= n < hi and len(groups[(lo, hi)]) < 30:
                groups[(lo, hi)].append(text)

    def full(s):
        _parse_cached.cache_clear()
        parse(s, g.table)

    print(f"{'tokens':>10s} {'lark syntax/s':>14s} {'fast syntax/s':>14s} {'speed-up':>9s} {'full parse/s':>13s}")
    for (lo, hi), strings in groups.items():
        lark, fast = rate(parse_syntax_lark, strings), rate(parse_syntax, strings)
        print(f"{lo:>4d}-{hi:<5d} {lark:14.0f} {fast:14.0f} {fast / lark:8.1f}x {rate(full, strings):13.0f}")


if __name__ == "__main__":
    main()
