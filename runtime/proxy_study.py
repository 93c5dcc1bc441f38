"""How well each zero-cost proxy (einc.proxies) ranks a grammar's networks on a dataset: sample N
networks, score each at initialisation with every proxy, train each briefly, and give each
proxy's Spearman rank correlation with the trained validation metric, and its time.

The networks are drawn as ``einc search`` draws them (the valid-by-construction sampler within
the same budgets, duplicates redrawn) and trained as it trains them (runtime/train.py, weights
seeded with the search's seed), in this process, one after another: the proxies and a training
then take the same machine. Every network is scored on one fixed batch of the training split.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from einc.sample import Budget

from .train_config import TrainConfig

REDRAWS = 20  # a sample repeating an earlier one is drawn again, at most this often in a row


@dataclass
class Network:
    """One sampled network: its proxy scores (einc.proxies.Score), and its trained metric or why
    its training failed."""

    index: int
    arch: str
    scores: dict[str, Any]
    metric: float | None = None
    reason: str | None = None
    train_seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"index": self.index, "arch": self.arch, "metric": self.metric, "reason": self.reason,
                "train_seconds": round(self.train_seconds, 4),
                "proxies": {k: {"value": s.value, "seconds": round(s.seconds, 6), "reason": s.reason}
                            for k, s in self.scores.items()}}


@dataclass
class ProxyStudy:
    """The networks of one study, and what their metric was (``metric``: the journal key, such as
    val_acc; ``minimize``: whether smaller is better)."""

    grammar: str
    data: str
    epochs: int
    metric: str
    minimize: bool
    names: tuple[str, ...]
    networks: list[Network] = field(default_factory=list)


@dataclass(frozen=True)
class Row:
    """One proxy's line of the table: Spearman with the metric (oriented so that positive means the
    proxy ranks better networks higher) over ``count`` networks, and its median seconds per network
    (a median: the first flops count in a process imports torch._dynamo, seconds once)."""

    name: str
    rho: float
    count: int
    seconds: float


def run(grammar: str = "einspace", data: str = "digits", count: int = 60, train: TrainConfig | None = None,
        seed: int = 0, budget: Budget | None = None, names: Sequence[str] | None = None, proxy_batch: int = 64,
        device: str | None = None, plugins: tuple[str, ...] = (),
        on_network: Callable[[Network], None] | None = None) -> ProxyStudy:
    """Sample ``count`` networks of ``grammar`` (random.Random(seed)), score each with the proxies
    ``names`` (default all) on ``proxy_batch`` training samples, train each with ``train`` (default
    TrainConfig(epochs=3); its seed is ``seed``, as in a search) and score it on the validation
    split; ``on_network`` sees each network as it is done."""
    import torch

    import einc
    from einc.proxies import PROXIES, score
    from einc.sample import Sampler

    from .candidate import cached_dataset, cached_grammar
    from .train import device_split, pick_device, train_and_score

    names = tuple(PROXIES) if names is None else tuple(names)
    unknown = [n for n in names if n not in PROXIES]
    if unknown:
        raise einc.EinError(f"unknown proxy {', '.join(unknown)}; the proxies are {', '.join(PROXIES)}")
    train = replace(train or TrainConfig(epochs=3), seed=seed)
    g = cached_grammar(grammar, tuple(plugins))
    ds = cached_dataset(data, 0)
    task = ds.task
    shape = g.check_input(ds.input_shape)
    dev = pick_device(device)
    x, y = device_split(ds, "train", dev)
    pick = np.random.default_rng(seed).choice(len(x), size=min(proxy_batch, len(x)), replace=False)
    batch = (x[torch.as_tensor(pick, device=x.device)], y[torch.as_tensor(pick, device=y.device)])
    sampler = Sampler(g.table, shape, budget or Budget())
    rng = random.Random(seed)
    study = ProxyStudy(grammar, data, train.epochs, task.val_key, task.info.minimize, names)
    seen: set[str] = set()
    for index in range(count):
        text = _new_sample(g, sampler, rng, seen)
        if text is None:
            break
        arch = g.parse(text, shape)
        net = Network(index, text, score(arch, batch, names, loss=task.loss, output_shape=ds.output_shape,
                                         seed=seed))
        start = time.perf_counter()
        try:
            torch.manual_seed(seed)  # the weights the proxies saw (runtime/candidate.py seeds alike)
            model = einc.build(arch, input_shape=shape, output_shape=ds.output_shape)
            net.metric = train_and_score(model, ds, train, dev, flops=arch.infer(shape).flops)[task.val_key]
        except Exception as e:  # a failed training is a result, as in a search's workers
            net.reason = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        net.train_seconds = time.perf_counter() - start
        study.networks.append(net)
        if on_network is not None:
            on_network(net)
    return study


def _new_sample(g, sampler, rng: random.Random, seen: set[str]) -> str | None:
    """The text of a sample no earlier one repeats, or None when REDRAWS draws in a row repeated."""
    for _ in range(REDRAWS):
        text = g.architecture(sampler.sample(rng)).text
        if text not in seen:
            seen.add(text)
            return text
    return None


def ranks(values: Sequence[float]) -> np.ndarray:
    """1-based ranks, tied values (infinities included) sharing their average rank."""
    _, inverse, counts = np.unique(np.asarray(values, dtype=np.float64), return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return ((ends - counts + ends + 1) / 2.0)[inverse]


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation: Pearson's of the average ranks; NaN when either side is constant
    or there are fewer than 2 pairs."""
    if len(x) != len(y):
        raise ValueError(f"spearman of {len(x)} against {len(y)} values")
    if len(x) < 2:
        return math.nan
    rx, ry = ranks(x), ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    den = math.sqrt(float((rx * rx).sum() * (ry * ry).sum()))
    return float((rx * ry).sum()) / den if den > 0 else math.nan


def correlations(study: ProxyStudy) -> list[Row]:
    """Each proxy's row, over the networks that trained and that it could score (not NaN)."""
    sign = -1.0 if study.minimize else 1.0
    rows = []
    for name in study.names:
        pairs = [(n.scores[name].value, sign * n.metric) for n in study.networks
                 if n.metric is not None and not math.isnan(n.scores[name].value) and not math.isnan(n.metric)]
        seconds = [n.scores[name].seconds for n in study.networks]
        rows.append(Row(name, spearman([p for p, _ in pairs], [m for _, m in pairs]), len(pairs),
                        float(np.median(seconds)) if seconds else math.nan))
    return rows


def format_table(study: ProxyStudy) -> str:
    """The study as the command prints it: a header, one line per proxy (median seconds per network),
    then training (build included) for scale, then why proxies gave NaN."""
    nets = study.networks
    trained = [n for n in nets if n.metric is not None]
    failed: dict[str, int] = {}
    for n in nets:
        if n.reason is not None:
            failed[n.reason.split(":")[0]] = failed.get(n.reason.split(":")[0], 0) + 1
    lines = [f"{len(nets)} networks of {study.grammar} on {study.data}, {study.epochs} epoch"
             f"{'s' * (study.epochs != 1)} each: {len(trained)} trained"
             + (f", {sum(failed.values())} failed ({', '.join(f'{k} {v}' for k, v in sorted(failed.items()))})"
                if failed else "")]
    if trained:
        values = np.array([n.metric for n in trained], dtype=np.float64)
        lines.append(f"{study.metric}: median {np.median(values):.4g}, range {values.min():.4g} to {values.max():.4g}")
    lines.append(f"Spearman with {study.metric}" + (" (negated: smaller is better)" if study.minimize else "")
                 + " over the trained networks each proxy scores")
    lines.append(f"{'proxy':<10} {'Spearman':>9} {'networks':>9} {'median time':>13}")
    for row in correlations(study):
        rho = "n/a" if math.isnan(row.rho) else f"{row.rho:+.3f}"
        lines.append(f"{row.name:<10} {rho:>9} {row.count:>9} {_seconds(row.seconds):>13}")
    if nets:
        lines.append(f"{'training':<10} {'':>9} {len(trained):>9} "
                     f"{_seconds(float(np.median([n.train_seconds for n in nets]))):>13}")
    reasons: dict[str, set[str]] = {}
    for n in nets:
        for name, s in n.scores.items():
            if s.reason is not None:
                reasons.setdefault(name, set()).add(s.reason)
    for name, why in reasons.items():
        lines.append(f"{name}: NaN on {sum(n.scores[name].reason is not None for n in nets)} networks ("
                     + "; ".join(sorted(why)[:3]) + ("; ..." if len(why) > 3 else "") + ")")
    return "\n".join(lines)


def _seconds(s: float) -> str:
    if math.isnan(s):
        return "n/a"
    return f"{s * 1000:.1f} ms" if s < 1 else f"{s:.2f} s"
