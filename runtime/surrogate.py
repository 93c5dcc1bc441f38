"""A Gaussian process over derivation trees with the Weisfeiler-Lehman kernel (runtime/wl.py): the
model that Bayesian optimisation (runtime/bo.py) and the prefilter (runtime/prefilter.py) ask which
untrained architecture is likely to score well.

Scores are standardised; the kernel's depth and the noise are chosen by marginal likelihood
from small grids, ties to the first. Its arithmetic runs inside a search's proposals, so resuming
must recompute it to the bit: the Cholesky factor and the triangular solves are written as
rank-one updates of numpy's elementwise operations, and sums are accumulated row by row in a
fixed order, so no BLAS or LAPACK routine (whose threads and blocking change rounding) is called.
On a few hundred points this takes milliseconds.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from einc.tree import Expansion

from .wl import Features, features, kernels

DEPTHS = (0, 1, 2, 3)
"""WL depths tried: 0 compares op counts alone, 3 subtrees three levels deep."""

NOISES = (1e-3, 1e-2, 1e-1, 1.0)
"""Noise variances tried, relative to the standardised scores' variance of 1."""

MAX_POINTS = 250
"""A fit uses at most this many observations (the latest): the factorisation grows as n**3."""


def cholesky(a: np.ndarray) -> np.ndarray | None:
    """Lower-triangular L with L @ L.T == a, or None when ``a`` is not positive definite."""
    a = np.array(a, dtype=np.float64)
    n = len(a)
    low = np.zeros_like(a)
    for j in range(n):
        d = a[j, j]
        if not d > 0:
            return None
        col = a[j:, j] / math.sqrt(d)
        low[j:, j] = col
        a[j + 1:, j + 1:] -= col[1:, None] * col[None, 1:]
    return low


def forward(low: np.ndarray, b: np.ndarray) -> np.ndarray:
    """x with low @ x == b (b: n x m)."""
    x = np.array(b, dtype=np.float64)
    for i in range(len(low)):
        x[i] /= low[i, i]
        x[i + 1:] -= low[i + 1:, i, None] * x[i][None, :]
    return x


def backward(low: np.ndarray, b: np.ndarray) -> np.ndarray:
    """x with low.T @ x == b (b: n x m)."""
    x = np.array(b, dtype=np.float64)
    for i in range(len(low) - 1, -1, -1):
        x[i] /= low[i, i]
        x[:i] -= low[i, :i, None] * x[i][None, :]
    return x


def column_sums(m: np.ndarray) -> np.ndarray:
    """Sum of the rows of ``m``, added one after the other (a fixed order)."""
    acc = np.zeros(m.shape[1:])
    for row in m:
        acc += row
    return acc


@dataclass(frozen=True)
class Posterior:
    """A GP conditioned on points: predicts the standardised score of new ones."""

    points: tuple[Features, ...]
    y: np.ndarray        # standardised scores of the points
    low: np.ndarray      # Cholesky factor of K + noise I
    alpha: np.ndarray    # (K + noise I)^-1 y, as a column
    depth: int
    noise: float
    evidence: float      # log marginal likelihood

    def predict(self, feats: Sequence[Features]) -> tuple[np.ndarray, np.ndarray]:
        """Mean and standard deviation (standardised units) of each of ``feats``."""
        if not feats:
            return np.zeros(0), np.zeros(0)
        cross = kernels(self.points, feats, (self.depth,))[self.depth]  # n x m
        mean = column_sums(cross * self.alpha)
        v = forward(self.low, cross)
        var = np.maximum(1.0 - column_sums(v * v), 0.0)
        return mean, np.sqrt(var)

    def believe(self, feats: Sequence[Features]) -> Posterior:
        """This posterior with ``feats`` added as if observed at their predicted means (the kriging
        believer): where a proposal is in flight, the model is no longer uncertain."""
        if not feats:
            return self
        mean, _ = self.predict(feats)
        points = (*self.points, *feats)
        y = np.concatenate([self.y, mean])
        return _condition(points, y, self.depth, self.noise) or self


def _condition(points: Sequence[Features], y: np.ndarray, depth: int, noise: float,
               gram: np.ndarray | None = None) -> Posterior | None:
    k = kernels(points, points, (depth,))[depth] if gram is None else gram
    low = cholesky(k + noise * np.eye(len(points)))
    if low is None:
        return None
    alpha = backward(low, forward(low, y[:, None]))
    evidence = (-0.5 * math.fsum(y * alpha[:, 0]) - math.fsum(np.log(np.diag(low)))
                - 0.5 * len(y) * math.log(2 * math.pi))
    return Posterior(tuple(points), y, low, alpha, depth, noise, evidence)


class Model:
    """GP regression of scores on trees. ``fit`` on (tree, score) pairs, then ``predict`` or
    ``expected_improvement`` on candidate trees, in the scores' own units."""

    def __init__(self, depths: Sequence[int] = DEPTHS, noises: Sequence[float] = NOISES, max_points: int = MAX_POINTS):
        self.depths, self.noises, self.max_points = tuple(depths), tuple(noises), max_points
        self._features: dict[Expansion, Features] = {}
        self.posterior: Posterior | None = None
        self.centre, self.scale, self.best = 0.0, 1.0, 0.0

    def features(self, tree: Expansion) -> Features:
        f = self._features.get(tree)
        return f if f is not None else features(tree, max(self.depths))

    def fit(self, trees: Sequence[Expansion], scores: Sequence[float]) -> None:
        """Condition on the latest ``max_points`` pairs; the depth and noise of highest evidence win."""
        trees, scores = list(trees)[-self.max_points:], list(scores)[-self.max_points:]
        if not trees:
            self.posterior = None
            return
        keep = set(trees)
        self._features = {t: f for t, f in self._features.items() if t in keep}
        for t in trees:
            if t not in self._features:
                self._features[t] = features(t, max(self.depths))
        n = len(scores)
        self.centre = math.fsum(scores) / n
        spread = math.sqrt(math.fsum((s - self.centre) ** 2 for s in scores) / n)
        self.scale = spread if spread > 0 else 1.0
        y = (np.array(scores, dtype=np.float64) - self.centre) / self.scale
        self.best = float(y.max())
        points = [self._features[t] for t in trees]
        grams = kernels(points, points, self.depths)
        best: Posterior | None = None
        for depth in self.depths:
            for noise in self.noises:
                p = _condition(points, y, depth, noise, grams[depth])
                if p is not None and (best is None or p.evidence > best.evidence):
                    best = p
        self.posterior = best

    def predict(self, trees: Sequence[Expansion], pending: Sequence[Expansion] = ()) -> tuple[np.ndarray, np.ndarray]:
        """Mean and standard deviation of each tree's score; ``pending`` trees (proposed, not yet
        scored) are believed at their predicted means first."""
        if self.posterior is None:
            raise ValueError("predict() before fit() on at least one observation")
        post = self.posterior.believe([self.features(t) for t in pending])
        mean, sd = post.predict([self.features(t) for t in trees])
        return self.centre + self.scale * mean, self.scale * sd

    def expected_improvement(self, trees: Sequence[Expansion], pending: Sequence[Expansion] = ()) -> np.ndarray:
        """E[max(0, score - best observed)] of each tree (larger: more worth training)."""
        mean, sd = self.predict(trees, pending)
        best = self.centre + self.scale * self.best
        out = np.zeros(len(trees))
        for i, (m, s) in enumerate(zip(mean.tolist(), sd.tolist(), strict=True)):
            if s <= 1e-12 * self.scale:
                out[i] = max(m - best, 0.0)
                continue
            z = (m - best) / s
            out[i] = s * (z * 0.5 * (1 + math.erf(z / math.sqrt(2))) + math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi))
        return out


class Observed:
    """The distinct trees a strategy has been told about, each with its first score's value, and a
    model fitted to them when asked (again only when they changed). ``key`` tells repeats apart;
    a failed evaluation is fitted as the worst value seen, so the model learns what fails."""

    def __init__(self, key: Callable[[Expansion], str], model: Model | None = None):
        self.key, self.model = key, model or Model()
        self.trees: list[Expansion] = []
        self.values: list[float | None] = []
        self.seen: set[str] = set()
        self._fitted = -1

    def add(self, tree: Expansion, value: float | None) -> bool:
        """Record a tree's value; False (and nothing recorded) for a tree seen before."""
        key = self.key(tree)
        if key in self.seen:
            return False
        self.seen.add(key)
        self.trees.append(tree)
        self.values.append(value)
        return True

    def any(self) -> bool:
        """Whether any evaluation succeeded (the model needs one)."""
        return any(v is not None for v in self.values)

    def fitted(self) -> Model:
        if self._fitted != len(self.trees):
            worst = min(v for v in self.values if v is not None)
            self.model.fit(self.trees, [worst if v is None else v for v in self.values])
            self._fitted = len(self.trees)
        return self.model
