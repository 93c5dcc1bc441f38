"""What a search learns: a task's targets, head, loss, metric and the metric's direction.

A ``Task`` is chosen once per search (``einc search --task/--metric``, or inferred from the
training targets by runtime/data.py) and carried through loading, building, training, scoring,
ranking and reporting, so nothing downstream assumes classification:

* ``classification``: N class indices; head: mean over positions, linear to K; cross-entropy;
  ``accuracy`` or ``error``.
* ``multilabel``: N x K of 0 and 1; the same head; BCE on logits; ``map`` or ``auroc``.
* ``regression``: N x K floats (a vector N, given ``--task regression``: one each); the same head; MSE; ``mse``,
  ``mae`` or ``r2``.
* ``dense``: targets of the inputs' rank, N x C' x H' x W' or N x S' x D'; the paper's dense head
  (adaptive average pooling to the target's positions, linear to its channels); ``rel-l2``
  (trained on relative l2), ``mse`` (MSE) or ``auroc`` per pixel (BCE).

Every metric is computed over a whole split at once (AUROC, mAP and r2 are not averages of
per-batch values): ``Task.keep`` reduces each batch's output to what scoring needs, and
``Task.score`` scores the concatenation. Each metric knows its direction and its journal key
(``val_acc``/``test_acc`` for accuracy, as einc has always written; ``val_rel_l2``, ``val_auroc``,
... for the others), and ``Task.goal`` is the ``Goal`` that ranks a search's evaluations.

    >>> t = Task("dense", "rel-l2", (1, 85, 85))
    >>> t.goal, t.val_key, t.test_key
    (Goal(metric='val_rel_l2', minimize=True), 'val_rel_l2', 'test_rel_l2')
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from einc.errors import EinError

from .goal import Goal

if TYPE_CHECKING:
    import torch

KINDS = ("classification", "multilabel", "regression", "dense")


class TaskError(EinError):
    """A task or metric that does not exist, or does not fit the kind of task."""


# --------------------------------------------------------------------------- metrics (whole split)


def accuracy(pred: np.ndarray, y: np.ndarray) -> float:
    """Share of predicted class indices equal to the labels."""
    return int((pred == y).sum()) / max(1, len(y))


def error(pred: np.ndarray, y: np.ndarray) -> float:
    """0-1 error: the share of wrong class indices (the paper's NinaPro, CIFAR100 metric)."""
    return int((pred != y).sum()) / max(1, len(y))


def mse(pred: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean((pred.astype(np.float64) - y) ** 2))


def mae(pred: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.abs(pred.astype(np.float64) - y)))


def r2(pred: np.ndarray, y: np.ndarray) -> float:
    """Coefficient of determination per output column, averaged (scikit-learn's ``r2_score``); a
    constant column scores 1.0 when predicted exactly, else 0.0."""
    p = pred.astype(np.float64).reshape(len(pred), -1)
    t = y.astype(np.float64).reshape(len(y), -1)
    res = ((t - p) ** 2).sum(axis=0)
    tot = ((t - t.mean(axis=0)) ** 2).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        per = np.where(tot > 0, 1 - res / np.where(tot > 0, tot, 1), np.where(res == 0, 1.0, 0.0))
    return float(per.mean())


def rel_l2(pred: np.ndarray, y: np.ndarray) -> float:
    """Relative l2 error ``||pred - y|| / ||y||`` per sample, averaged over samples (the paper's Darcy
    Flow metric; predicting zeros scores 1.0)."""
    p = pred.astype(np.float64).reshape(len(pred), -1)
    t = y.astype(np.float64).reshape(len(y), -1)
    return float(np.mean(np.linalg.norm(p - t, axis=1) / np.maximum(np.linalg.norm(t, axis=1), 1e-12)))


def _average_ranks(s: np.ndarray) -> np.ndarray:
    """1-based ranks of ``s``, tied values sharing their average rank."""
    order = np.argsort(s, kind="mergesort")
    ss = s[order]
    starts = np.r_[0, np.flatnonzero(np.diff(ss)) + 1]
    ends = np.r_[starts[1:], len(ss)]
    ranks = np.empty(len(s), dtype=np.float64)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks


def _auroc(s: np.ndarray, y: np.ndarray) -> float | None:
    pos = y > 0.5
    p, n = int(pos.sum()), int(len(y) - pos.sum())
    if p == 0 or n == 0:
        return None
    return float((_average_ranks(s)[pos].sum() - p * (p + 1) / 2) / (p * n))


def _average_precision(s: np.ndarray, y: np.ndarray) -> float | None:
    """scikit-learn's ``average_precision_score``: sum over thresholds of (R_k - R_{k-1}) P_k."""
    order = np.argsort(-s, kind="mergesort")
    s, t = s[order], (y[order] > 0.5).astype(np.float64)
    if t.sum() == 0:
        return None
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # the last sample of each distinct score
    tps = np.cumsum(t)[last]
    precision = tps / (last + 1)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def _per_label(fn: Callable[[np.ndarray, np.ndarray], float | None], what: str, pred: np.ndarray,
               y: np.ndarray, columns: bool) -> float:
    """``fn`` over each label column, averaged (macro); a dense task's pixels are one pool (micro)."""
    if columns:
        p, t = pred.reshape(len(pred), -1), y.reshape(len(y), -1)
        got = [v for k in range(t.shape[1]) if (v := fn(p[:, k].astype(np.float64), t[:, k])) is not None]
    else:
        one = fn(pred.reshape(-1).astype(np.float64), y.reshape(-1))
        got = [] if one is None else [one]
    if not got:
        raise TaskError(f"{what} is undefined here: no label has both positive and negative targets in the split")
    return float(np.mean(got))


def auroc_labels(pred: np.ndarray, y: np.ndarray) -> float:
    """Area under the ROC curve per label, averaged over labels with both classes present."""
    return _per_label(_auroc, "AUROC", pred, y, columns=True)


def auroc_pixels(pred: np.ndarray, y: np.ndarray) -> float:
    """Area under the ROC curve over every pixel of every sample (the paper's Cosmic, as 1 - AUROC)."""
    return _per_label(_auroc, "AUROC", pred, y, columns=False)


def mean_average_precision(pred: np.ndarray, y: np.ndarray) -> float:
    """Average precision per label, averaged over labels with a positive target (mAP)."""
    return _per_label(_average_precision, "mAP", pred, y, columns=True)


@dataclass(frozen=True)
class Metric:
    name: str       # as --metric takes it
    key: str        # the journal's metrics key is val_<key> / test_<key>
    minimize: bool
    label: str      # as summaries and plots name it
    percent: bool   # shown as a percentage


METRICS = {m.name: m for m in (
    Metric("accuracy", "acc", False, "accuracy", True),
    Metric("error", "error", True, "0-1 error", True),
    Metric("map", "map", False, "mAP", False),
    Metric("auroc", "auroc", False, "AUROC", False),
    Metric("mse", "mse", True, "MSE", False),
    Metric("mae", "mae", True, "MAE", False),
    Metric("r2", "r2", False, "r2", False),
    Metric("rel-l2", "rel_l2", True, "relative l2", False),
)}

TASK_METRICS = {"classification": ("accuracy", "error"), "multilabel": ("map", "auroc"),
                "regression": ("mse", "mae", "r2"), "dense": ("rel-l2", "mse", "auroc")}
"""Each kind's metrics, its default first."""

_SCORE: dict[tuple[str, str], Callable[[np.ndarray, np.ndarray], float]] = {
    ("classification", "accuracy"): accuracy, ("classification", "error"): error,
    ("multilabel", "map"): mean_average_precision, ("multilabel", "auroc"): auroc_labels,
    ("regression", "mse"): mse, ("regression", "mae"): mae, ("regression", "r2"): r2,
    ("dense", "rel-l2"): rel_l2, ("dense", "mse"): mse, ("dense", "auroc"): auroc_pixels,
}


def check_choice(kind: str | None, metric: str | None) -> None:
    """``TaskError`` unless ``kind`` (None: inferred) and ``metric`` (None: the kind's default) can go together."""
    if kind is not None and kind not in KINDS:
        raise TaskError(f'task "{kind}" is not one of {", ".join(KINDS)}')
    if metric is not None and metric not in METRICS:
        raise TaskError(f'metric "{metric}" is not one of {", ".join(METRICS)}')
    if kind is not None and metric is not None and metric not in TASK_METRICS[kind]:
        raise TaskError(f'metric "{metric}" does not apply to a {kind} task; choose '
                        + " or ".join(TASK_METRICS[kind]))


@dataclass(frozen=True)
class Task:
    """``output_shape``: what the network's head outputs per sample: ``(classes,)``, ``(K,)``, or the
    target's shape (C', H', W') / (S', D') for a dense task. ``metric`` None: the kind's default."""

    kind: str = "classification"
    metric: str | None = None
    output_shape: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        check_choice(self.kind, self.metric)
        if self.metric is None:
            object.__setattr__(self, "metric", TASK_METRICS[self.kind][0])
        object.__setattr__(self, "output_shape", tuple(int(n) for n in self.output_shape))
        rank = len(self.output_shape)
        if (rank != 1 if self.kind != "dense" else rank not in (2, 3)) or min(self.output_shape, default=0) < 1:
            raise TaskError(f"a {self.kind} task's output shape {self.output_shape} is not "
                            + ("(C, H, W) or (S, D)" if self.kind == "dense" else "(K,)") + " of positive sizes")

    @property
    def info(self) -> Metric:
        assert self.metric is not None  # set in __post_init__
        return METRICS[self.metric]

    @property
    def num_classes(self) -> int | None:
        return self.output_shape[0] if self.kind == "classification" else None

    @property
    def val_key(self) -> str:
        return f"val_{self.info.key}"

    @property
    def test_key(self) -> str:
        return f"test_{self.info.key}"

    @property
    def goal(self) -> Goal:
        return Goal(self.val_key, self.info.minimize)

    def describe(self) -> str:
        """``19 classes``, ``multilabel, 5 labels``, ``regression, 1 value``, ``dense, output 1x85x85``."""
        n = self.output_shape[0]
        if self.kind == "classification":
            return f"{n} classes"
        if self.kind == "multilabel":
            return f"multilabel, {n} label{'s' * (n != 1)}"
        if self.kind == "regression":
            return f"regression, {n} value{'s' * (n != 1)}"
        return f"dense, output {'x'.join(map(str, self.output_shape))}"

    def format(self, value: float | None) -> str:
        """A value of this task's metric as summaries print it."""
        if value is None:
            return "n/a"
        return f"{100 * value:.2f}%" if self.info.percent else f"{value:.4g}"

    # ----------------------------------------------------------------------- training and scoring

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The training loss of a batch: ``out`` the network's output (float32), ``y`` its targets."""
        from torch.nn import functional as F

        if self.kind == "classification":
            return F.cross_entropy(out, y)
        if self.kind == "multilabel" or (self.kind == "dense" and self.metric == "auroc"):
            return F.binary_cross_entropy_with_logits(out, y)
        if self.kind == "dense" and self.metric == "rel-l2":
            diff = (out - y).flatten(1).norm(dim=1)
            return (diff / y.flatten(1).norm(dim=1).clamp_min(1e-12)).mean()
        return F.mse_loss(out, y)

    def keep(self, out: torch.Tensor) -> torch.Tensor:
        """What scoring needs of a batch's output: the predicted class, or the output itself (logits
        for the ranking metrics, which a sigmoid would not change)."""
        return out.argmax(dim=1) if self.kind == "classification" else out.float()

    def score(self, kept: np.ndarray, y: np.ndarray) -> float:
        """The metric over a whole split: ``kept`` the concatenated ``keep`` of its batches."""
        assert self.metric is not None
        return _SCORE[self.kind, self.metric](kept, y)

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "metric": self.metric, "output_shape": list(self.output_shape)}
