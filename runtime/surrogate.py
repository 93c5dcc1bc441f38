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

WEIGHTS = (1.0, 0.5, 0.0)
"""Shares of the WL kernel tried against a proxy's kernel, when the model has a proxy (1.0: WL alone)."""

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


Point = tuple[Features, float]
"""A tree as the model sees it: its WL features and its proxy's value (sign * log(1 + |v|); NaN: none)."""


@dataclass(frozen=True)
class Scale:
    """How proxy values become the kernel's coordinate: missing ones take the worst seen, then standardised."""

    fill: float
    centre: float
    spread: float

    @classmethod
    def of(cls, values: np.ndarray) -> Scale:
        ok = values[np.isfinite(values)]
        fill = float(ok.min()) if len(ok) else 0.0
        full = np.where(np.isfinite(values), values, fill)
        centre = math.fsum(full) / len(full)
        spread = math.sqrt(math.fsum((full - centre) ** 2) / len(full))
        return cls(fill, centre, spread if spread > 0 else 1.0)

    def __call__(self, values: np.ndarray) -> np.ndarray:
        return (np.where(np.isfinite(values), values, self.fill) - self.centre) / self.spread


def gram(a: Sequence[Point], b: Sequence[Point], depth: int, weight: float, scale: Scale) -> np.ndarray:
    """The kernel: ``weight`` of the WL kernel of ``depth`` plus ``1 - weight`` of a squared-exponential
    kernel (length 1) on the standardised proxy values."""
    k = kernels([p[0] for p in a], [p[0] for p in b], (depth,))[depth]
    if weight == 1.0:
        return k
    za, zb = scale(np.array([p[1] for p in a])), scale(np.array([p[1] for p in b]))
    return weight * k + (1.0 - weight) * np.exp(-0.5 * (za[:, None] - zb[None, :]) ** 2)


@dataclass(frozen=True)
class Posterior:
    """A GP conditioned on points: predicts the standardised score of new ones."""

    points: tuple[Point, ...]
    y: np.ndarray        # standardised scores of the points
    low: np.ndarray      # Cholesky factor of K + noise I
    alpha: np.ndarray    # (K + noise I)^-1 y, as a column
    depth: int
    weight: float        # of the WL kernel against the proxy's
    noise: float
    scale: Scale
    evidence: float      # log marginal likelihood

    def predict(self, points: Sequence[Point]) -> tuple[np.ndarray, np.ndarray]:
        """Mean and standard deviation (standardised units) of each of ``points``."""
        if not points:
            return np.zeros(0), np.zeros(0)
        cross = gram(self.points, points, self.depth, self.weight, self.scale)  # n x m
        mean = column_sums(cross * self.alpha)
        v = forward(self.low, cross)
        var = np.maximum(1.0 - column_sums(v * v), 0.0)
        return mean, np.sqrt(var)

    def believe(self, points: Sequence[Point]) -> Posterior:
        """This posterior with ``points`` added as if observed at their predicted means (the kriging
        believer): where a proposal is in flight, the model is no longer uncertain."""
        if not points:
            return self
        mean, _ = self.predict(points)
        both = (*self.points, *points)
        y = np.concatenate([self.y, mean])
        k = gram(both, both, self.depth, self.weight, self.scale)
        return _condition(both, y, k, self.depth, self.weight, self.noise, self.scale) or self


def _condition(points: Sequence[Point], y: np.ndarray, k: np.ndarray, depth: int, weight: float, noise: float,
               scale: Scale) -> Posterior | None:
    low = cholesky(k + noise * np.eye(len(points)))
    if low is None:
        return None
    alpha = backward(low, forward(low, y[:, None]))
    evidence = (-0.5 * math.fsum(y * alpha[:, 0]) - math.fsum(np.log(np.diag(low)))
                - 0.5 * len(y) * math.log(2 * math.pi))
    return Posterior(tuple(points), y, low, alpha, depth, weight, noise, scale, evidence)


class Model:
    """GP regression of scores on trees. ``fit`` on (tree, score) pairs, then ``predict`` or
    ``expected_improvement`` on candidate trees, in the scores' own units.

    ``proxy`` (a zero-cost proxy of a tree, runtime/zero_cost.py) adds a kernel on its values,
    mixed with the WL kernel in the proportion of highest evidence (WEIGHTS): where the proxy
    ranks networks, the model leans on it, and where it does not, the WL kernel alone remains.
    """

    def __init__(self, depths: Sequence[int] = DEPTHS, noises: Sequence[float] = NOISES, max_points: int = MAX_POINTS,
                 proxy: Callable[[Expansion], float] | None = None):
        self.depths, self.noises, self.max_points, self.proxy = tuple(depths), tuple(noises), max_points, proxy
        self.weights = WEIGHTS if proxy is not None else (1.0,)
        self._points: dict[Expansion, Point] = {}
        self.posterior: Posterior | None = None
        self.centre, self.scale, self.best = 0.0, 1.0, 0.0

    def point(self, tree: Expansion) -> Point:
        p = self._points.get(tree)
        if p is not None:
            return p
        value = math.nan
        if self.proxy is not None:
            v = self.proxy(tree)
            value = math.copysign(math.log1p(abs(v)), v) if math.isfinite(v) else math.nan
        return features(tree, max(self.depths)), value

    def fit(self, trees: Sequence[Expansion], scores: Sequence[float]) -> None:
        """Condition on the latest ``max_points`` pairs; the depth, weight and noise of highest evidence win."""
        trees, scores = list(trees)[-self.max_points:], list(scores)[-self.max_points:]
        if not trees:
            self.posterior = None
            return
        self._points = {t: self.point(t) for t in trees}
        n = len(scores)
        self.centre = math.fsum(scores) / n
        spread = math.sqrt(math.fsum((s - self.centre) ** 2 for s in scores) / n)
        self.scale = spread if spread > 0 else 1.0
        y = (np.array(scores, dtype=np.float64) - self.centre) / self.scale
        self.best = float(y.max())
        points = [self._points[t] for t in trees]
        scale = Scale.of(np.array([p[1] for p in points]))
        wl = kernels([p[0] for p in points], [p[0] for p in points], self.depths)
        z = scale(np.array([p[1] for p in points]))
        near = np.exp(-0.5 * (z[:, None] - z[None, :]) ** 2)
        best: Posterior | None = None
        for depth in self.depths:
            for weight in self.weights:
                k = wl[depth] if weight == 1.0 else weight * wl[depth] + (1.0 - weight) * near
                for noise in self.noises:
                    p = _condition(points, y, k, depth, weight, noise, scale)
                    if p is not None and (best is None or p.evidence > best.evidence):
                        best = p
        self.posterior = best

    def predict(self, trees: Sequence[Expansion], pending: Sequence[Expansion] = ()) -> tuple[np.ndarray, np.ndarray]:
        """Mean and standard deviation of each tree's score; ``pending`` trees (proposed, not yet
        scored) are believed at their predicted means first."""
        if self.posterior is None:
            raise ValueError("predict() before fit() on at least one observation")
        post = self.posterior.believe([self.point(t) for t in pending])
        mean, sd = post.predict([self.point(t) for t in trees])
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
