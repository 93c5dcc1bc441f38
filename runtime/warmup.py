"""The zero-cost warm-up of the einspace reference code (``--warmup PROXY:K``): sample K
architectures, score each with a zero-cost proxy (einc.proxies) on one minibatch, and seed the
search's initial population (evolution) or design (BO) with the best.

Unlike a strategy, this builds and runs networks, so it happens once, in the search's own
process, before the first proposal, and what it chose is journaled (a ``warmup`` line): a resumed
search reads its choice back instead of scoring again. It is deterministic anyway: its samples
come from a generator seeded by the search's seed alone, and runtime/zero_cost.py scores them
the same on every run.
"""

from __future__ import annotations

import math
import random
import time
from typing import Any

from einc.errors import EinError
from einc.key import key
from einc.notation import show
from einc.sample import Sampler
from einc.tree import Expansion

from .journal import Journal
from .zero_cost import scorer

RETRIES = 20
"""Redraws of a sample that repeats a network already drawn."""


def parse_spec(spec: str) -> tuple[str, int]:
    """``"PROXY:K"`` as (proxy, K); an EinError in one line when it is not one."""
    from einc.proxies import PROXIES

    name, sep, count = spec.rpartition(":")
    if not sep or not count.isdigit() or int(count) < 1:
        raise EinError(f'warmup "{spec}": expected PROXY:K, K the number of samples scored (e.g. synflow:100)')
    if name not in PROXIES:
        raise EinError(f'warmup "{spec}": unknown proxy "{name}"; the proxies are {", ".join(PROXIES)}')
    return name, int(count)


def warm_up(spec: str, count: int, seed: int, grammar: Any, data: Any, sampler: Sampler, batch_size: int,
            journal: Journal, records: list[dict[str, Any]]) -> tuple[Expansion, ...]:
    """The ``count`` best of the warm-up's samples by proxy (best first): read back from ``records``
    when the journal holds them, else scored now and journaled."""
    shape = sampler.input[0].shape
    done = next((r for r in records if r.get("kind") == "warmup"), None)
    if done is not None:
        return tuple(grammar.parse(text, shape).tree for text in done["chosen"])
    proxy, k = parse_spec(spec)
    started = time.time()
    rng = random.Random(f"warmup {seed}")
    trees: list[Expansion] = []
    keys: set[str] = set()
    for _ in range(k):
        tree = sampler.sample(rng)
        for _ in range(RETRIES):
            if key(tree) not in keys:
                break
            tree = sampler.sample(rng)
        if key(tree) not in keys:
            keys.add(key(tree))
            trees.append(tree)
    value = scorer(proxy, grammar, data, seed, batch_size)
    values = [value(t) for t in trees]
    order = sorted(range(len(trees)), key=lambda i: (1, 0.0, i) if math.isnan(values[i]) else (0, -values[i], i))
    order = order[:count]
    journal.append({"kind": "warmup", "proxy": proxy, "sampled": len(trees),
                    "chosen": [show(trees[i]) for i in order],
                    "values": [None if math.isnan(values[i]) else values[i] for i in order],
                    "failed": sum(math.isnan(v) for v in values), "seconds": round(time.time() - started, 3)})
    return tuple(trees[i] for i in order)


def problem(spec: str, strategy: str, data: Any) -> str | None:
    """Why a search cannot warm up as asked, in one line; None when it can."""
    try:
        parse_spec(spec)
    except EinError as e:
        return str(e)
    if strategy not in ("re", "bo"):
        return f'warmup "{spec}" seeds an initial population: strategy re or bo, not {strategy}'
    if data is None:
        return f'warmup "{spec}" scores samples on a minibatch of the data: the search needs data'
    return None
