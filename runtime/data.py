"""Datasets for a search: loaders for the Unseen-NAS layout, .npz and x/y pairs, plus an embedded task.

Every loader validates what it reads (one located ``DataError`` per fault, never a traceback) and,
by default, normalises each channel with statistics of the training split only (paper B.1), so
valid/test never leak into preprocessing. x is float32, ``N x C x H x W`` (Im mode) or ``N x S x D``
(Col mode, where D is the channel axis: sequences, such as Unseen-NAS's Language). y holds the
targets of the dataset's ``task`` (runtime/task.py): int64 class indices in ``[0, num_classes)``
for classification, float32 otherwise. Unless a loader is told the task, the training targets
decide it: a vector of integers is classification, ``N x K`` values regression, targets with the
inputs' rank a dense task (multi-label is only chosen explicitly); the other splits must agree.

    >>> d = load_data("digits")            # no download: sklearn's 8x8 digits, AddNIST-style
    >>> d.input_shape, d.num_classes, d.train_x.shape
    ((2, 8, 8), 19, (5000, 2, 8, 8))
    >>> load_data("digits3").input_shape, load_data("digits10").input_shape
    ((3, 8, 8), (1, 8, 8))
"""

from __future__ import annotations

import functools
import importlib.util
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from einc.errors import EinError, one_line

from .task import TASK_METRICS, Task, TaskError, check_choice

SPLITS = ("train", "valid", "test")
KEYS = tuple(f"{s}_{a}" for s in SPLITS for a in ("x", "y"))


class DataError(EinError):
    """A data file is missing, unreadable or malformed; the message names the file and key."""


@dataclass(frozen=True, eq=False)
class Dataset:
    """Three splits held in memory; ``input_shape`` is one sample's shape (no batch axis)."""

    name: str
    train_x: np.ndarray
    train_y: np.ndarray
    valid_x: np.ndarray
    valid_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    num_classes: int | None  # classification's classes; None for the other tasks
    input_shape: tuple[int, ...]
    task: Task | None = None  # None: classification into num_classes (set on construction)

    def __post_init__(self) -> None:
        if self.task is None:
            if self.num_classes is None:
                raise DataError(f"{self.name}: error: a dataset needs num_classes or a task")
            object.__setattr__(self, "task", Task("classification", None, (self.num_classes,)))
        object.__setattr__(self, "_views", {})

    @property
    def output_shape(self) -> tuple[int, ...]:
        """What the network's head outputs per sample (runtime/task.py)."""
        assert self.task is not None
        return self.task.output_shape

    def with_task(self, kind: str | None = None, metric: str | None = None) -> Dataset:
        """This dataset as task ``kind`` (None: as loaded) scored by ``metric`` (None: the kind's
        default); the targets are checked and converted as a loader checks them. Memoised: a
        persistent worker converts (and copies to its device) once."""
        assert self.task is not None
        if (kind is None or kind == self.task.kind) and (metric is None or metric == self.task.metric):
            return self
        kind = kind or self.task.kind
        views: dict = self._views  # type: ignore[attr-defined]
        if (kind, metric) not in views:
            arrays = {f"{s}_{a}": getattr(self, f"{s}_{a}") for s in SPLITS for a in ("x", "y")}
            views[kind, metric] = _finish(self.name, arrays, {k: f"{self.name} ({k})" for k in KEYS},
                                          self.num_classes if kind == "classification" else None,
                                          normalise=False, task=kind, metric=metric)
        return views[kind, metric]

    def __repr__(self) -> str:
        sizes = "/".join(str(len(getattr(self, f"{s}_y"))) for s in SPLITS)
        assert self.task is not None
        what = f"classes={self.num_classes}" if self.task.kind == "classification" else \
            f"task={self.task.kind!r}, metric={self.task.metric!r}, output_shape={self.output_shape}"
        return f"Dataset({self.name!r}, input_shape={self.input_shape}, {what}, n={sizes})"


# --------------------------------------------------------------------------- validation


def _check_x(x: np.ndarray, where: str, ranks: tuple[int, ...] = (3, 4)) -> np.ndarray:
    if x.dtype.kind not in "iuf":
        raise DataError(f"{where}: error: inputs must be numeric, not {x.dtype}")
    if x.ndim not in ranks:
        want = " or ".join({3: "N x S x D (sequences, Col mode)", 4: "N x C x H x W"}[r] for r in sorted(ranks)[::-1])
        hint = "; add a channel axis" if x.ndim == 3 and ranks == (4,) else ""
        raise DataError(f"{where}: error: inputs must be {want}; got shape {x.shape}{hint}")
    if x.shape[0] == 0:
        raise DataError(f"{where}: error: the split is empty")
    if min(x.shape[1:]) < 1:
        raise DataError(f"{where}: error: samples have an empty axis; shape {x.shape}")
    x = x.astype(np.float32, copy=False)
    finite = np.isfinite(x).reshape(len(x), -1).all(axis=1)
    if not finite.all():
        first = int(np.argmin(finite))
        raise DataError(f"{where}: error: inputs contain NaN or inf (first in sample {first})")
    return x


def _check_y(y: np.ndarray, where: str) -> np.ndarray:
    if y.ndim != 1:
        raise DataError(f"{where}: error: labels must be a vector of N class indices; got shape {y.shape}")
    if y.dtype.kind == "f":
        bad = ~np.isfinite(y) | (y != np.round(y))
        if bad.any():
            i = int(np.argmax(bad))
            raise DataError(f"{where}: error: labels must be integers; sample {i} has label {y[i].item()!r}")
    elif y.dtype.kind not in "iu":
        raise DataError(f"{where}: error: labels must be integers, not {y.dtype}")
    if len(y) and y.min() < 0:
        i = int(np.argmin(y))
        raise DataError(f"{where}: error: labels must be non-negative; sample {i} has label {y[i]}")
    return y.astype(np.int64)


def _check_values(y: np.ndarray, where: str, what: str) -> np.ndarray:
    """Finite numeric targets as float32 (every kind but classification)."""
    if y.dtype.kind not in "iufb":
        raise DataError(f"{where}: error: {what} must be numeric, not {y.dtype}")
    y = y.astype(np.float32, copy=False)
    finite = np.isfinite(y).reshape(len(y), -1).all(axis=1)
    if not finite.all():
        raise DataError(f"{where}: error: {what} contain NaN or inf (first in sample {int(np.argmin(finite))})")
    return y


def _check_binary(y: np.ndarray, where: str, what: str) -> np.ndarray:
    bad = (y != 0) & (y != 1)
    if bad.any():
        i = int(np.argmax(bad.reshape(len(y), -1).any(axis=1)))
        raise DataError(f"{where}: error: {what} must be 0 or 1; sample {i} has another value")
    return y


def _infer_kind(y: np.ndarray, x_rank: int) -> str:
    """The task the training targets ask for: see the module's docstring."""
    if y.ndim == x_rank:
        return "dense"
    return "regression" if y.ndim == 2 else "classification"


def _check_targets(y: np.ndarray, kind: str, metric: str | None, x: np.ndarray, where: str,
                   inferred: bool) -> np.ndarray:
    """One split's targets checked for task ``kind`` and converted to its dtype and shape."""
    why = ' (the task inferred from "train_y"; --task chooses another)' if inferred else ""
    if kind == "classification":
        if y.ndim != 1:
            raise DataError(f"{where}: error: labels must be a vector of N class indices; got shape {y.shape}{why}")
        return _check_y(y, where)
    if kind == "dense":
        if y.ndim != x.ndim:
            raise DataError(f"{where}: error: dense targets must have the inputs' rank ({x.ndim}: "
                            + ("N x C x H x W" if x.ndim == 4 else "N x S x D") + f"); got shape {y.shape}{why}")
        y = _check_values(y, where, "targets")
        return _check_binary(y, where, "targets scored by AUROC") if metric == "auroc" else y
    if y.ndim == 1 and kind == "regression":
        y = y[:, None]
    if y.ndim != 2:
        raise DataError(f"{where}: error: {kind} targets must be N x K; got shape {y.shape}{why}")
    y = _check_values(y, where, "targets")
    return _check_binary(y, where, "multi-label targets") if kind == "multilabel" else y


def _finish(name: str, arrays: dict[str, np.ndarray], where: dict[str, str], num_classes: int | None,
            normalise: bool, ranks: tuple[int, ...] = (3, 4), task: str | None = None,
            metric: str | None = None) -> Dataset:
    """Validate six arrays (keyed as in ``KEYS``), agree shapes and targets, normalise, build.

    ``task``/``metric``: runtime/task.py's names; None infers the task from "train_y" and takes
    its default metric.
    """
    try:
        check_choice(task, metric)
    except TaskError as e:
        raise DataError(f"{where['train_y']}: error: {e}") from None
    xs = {s: _check_x(arrays[f"{s}_x"], where[f"{s}_x"], ranks) for s in SPLITS}
    train_y = np.asarray(arrays["train_y"])
    if task is None and train_y.ndim not in (1, 2, xs["train"].ndim):
        raise DataError(f"{where['train_y']}: error: targets must be a vector of N class indices, N x K values, "
                        f"or have the inputs' rank ({xs['train'].ndim}) for a dense task; got shape {train_y.shape}")
    kind = task or _infer_kind(train_y, xs["train"].ndim)
    if metric is not None and metric not in TASK_METRICS[kind]:
        raise DataError(f'{where["train_y"]}: error: metric "{metric}" does not apply to a {kind} task '
                        f"(inferred from its shape {arrays['train_y'].shape}; --task chooses another); choose "
                        + " or ".join(TASK_METRICS[kind]))
    ys = {s: _check_targets(np.asarray(arrays[f"{s}_y"]), kind, metric, xs[s], where[f"{s}_y"], task is None)
          for s in SPLITS}
    for s in SPLITS:
        if len(xs[s]) != len(ys[s]):
            raise DataError(f"{where[f'{s}_y']}: error: {len(ys[s])} labels for {len(xs[s])} inputs "
                            f'in "{s}_x"; they must have the same length')
        if xs[s].shape[1:] != xs["train"].shape[1:]:
            raise DataError(f"{where[f'{s}_x']}: error: samples have shape {xs[s].shape[1:]} but "
                            f'"train_x" samples have shape {xs["train"].shape[1:]}')
        if ys[s].shape[1:] != ys["train"].shape[1:]:
            raise DataError(f"{where[f'{s}_y']}: error: targets have shape {ys[s].shape[1:]} per sample but "
                            f'"train_y" targets have shape {ys["train"].shape[1:]}')
    classes = None
    if kind == "classification":
        classes = int(ys["train"].max()) + 1 if num_classes is None else num_classes
        for s in SPLITS:
            if ys[s].max() >= classes:
                i = int(np.argmax(ys[s]))
                known = "the task has" if num_classes is not None else '"train_y" has'
                raise DataError(f"{where[f'{s}_y']}: error: label {ys[s][i]} of sample {i} is out of range; "
                                f"{known} classes 0..{classes - 1}")
        out: tuple[int, ...] = (classes,)
    else:
        out = tuple(int(n) for n in ys["train"].shape[1:])
    if normalise:
        xs = _normalise(xs)
    try:
        the_task = Task(kind, metric, out)
    except TaskError as e:
        raise DataError(f"{where['train_y']}: error: {e}") from None
    return Dataset(name, xs["train"], ys["train"], xs["valid"], ys["valid"], xs["test"], ys["test"],
                   classes, tuple(int(n) for n in xs["train"].shape[1:]), the_task)


def _normalise(xs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-channel (axis 1 of N C H W, last axis of N S D) zero mean, unit std from train only."""
    train = xs["train"]
    axis = 1 if train.ndim == 4 else train.ndim - 1
    moved = np.moveaxis(train, axis, 0)
    # One channel at a time, in float64: exact enough and never a float64 copy of the whole split.
    mean = np.array([c.mean(dtype=np.float64) for c in moved])
    std = np.array([c.std(dtype=np.float64) for c in moved])
    std[std < 1e-8] = 1.0  # a constant channel is centred, not blown up
    shape = [1] * train.ndim
    shape[axis] = -1
    m, s = mean.astype(np.float32).reshape(shape), std.astype(np.float32).reshape(shape)
    return {k: ((x - m) / s).astype(np.float32, copy=False) for k, x in xs.items()}


# --------------------------------------------------------------------------- loaders


def _load_npy(path: Path) -> np.ndarray:
    if not path.is_file():
        raise DataError(f'{path}: error: missing split file "{path.name}"')
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise DataError(f"{path}: error: cannot read as a .npy array ({one_line(e)})") from None


def load_unseen_nas(directory: str | Path, num_classes: int | None = None, normalise: bool = True,
                    task: str | None = None, metric: str | None = None) -> Dataset:
    """The Unseen-NAS folder layout: ``{train,valid,test}_{x,y}.npy``, x as N x C x H x W (images) or
    N x S x D (sequences, Col mode)."""
    d = Path(directory)
    if not d.is_dir():
        raise DataError(f"{d}: error: not a folder with train_x.npy, train_y.npy, valid_x.npy, ...")
    paths = {k: d / f"{k}.npy" for k in KEYS}
    arrays = {k: _load_npy(p) for k, p in paths.items()}
    return _finish(d.name, arrays, {k: str(p) for k, p in paths.items()}, num_classes, normalise,
                   task=task, metric=metric)


def load_npz(path: str | Path, num_classes: int | None = None, normalise: bool = True,
             task: str | None = None, metric: str | None = None) -> Dataset:
    """One .npz holding the six arrays ``{train,valid,test}_{x,y}``."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: error: no such .npz file")
    try:
        z = np.load(p, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise DataError(f"{p}: error: holds a single .npy array, not a .npz archive of six arrays")
        with z:
            missing = [k for k in KEYS if k not in z.files]
            if missing:
                raise DataError(f'{p}: error: missing key "{missing[0]}"; a .npz needs '
                                + ", ".join(KEYS) + f" (it has {', '.join(z.files) or 'none'})")
            arrays = {}
            for k in KEYS:
                try:
                    arrays[k] = z[k]
                except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
                    raise DataError(f'{p}: error: key "{k}" cannot be read ({one_line(e)})') from None
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"{p}: error: cannot read as a .npz archive ({one_line(e)})") from None
    return _finish(p.stem, arrays, {k: f'{p}: "{k}"' for k in KEYS}, num_classes, normalise, task=task,
                   metric=metric)


def load_pair(x_path: str | Path, y_path: str | Path, seed: int = 0, num_classes: int | None = None,
              normalise: bool = True, task: str | None = None, metric: str | None = None) -> Dataset:
    """One x.npy and one y.npy, split 70/15/15 into train/valid/test by a permutation seeded by ``seed``."""
    xp, yp = Path(x_path), Path(y_path)
    x = _check_x(_load_npy(xp), str(xp))
    y = _load_npy(yp)
    kind = task or _infer_kind(y, x.ndim)
    if kind == "classification" and y.ndim == 1:
        y = _check_y(y, str(yp))
    if len(x) != len(y):
        raise DataError(f"{yp}: error: {len(y)} labels for {len(x)} inputs in {xp}; "
                        "they must have the same length")
    if len(x) < 3:
        raise DataError(f"{xp}: error: {len(x)} samples cannot be split into train, valid and test")
    perm = np.random.default_rng(seed).permutation(len(x))
    a, b = max(1, round(0.70 * len(x))), max(2, round(0.85 * len(x)))
    b = min(b, len(x) - 1)
    parts = dict(zip(SPLITS, np.split(perm, [a, b]), strict=False))
    arrays = {f"{s}_{v}": arr[parts[s]] for s in SPLITS for v, arr in (("x", x), ("y", y))}
    where = {f"{s}_{v}": f"{xp if v == 'x' else yp} ({s} split)" for s in SPLITS for v in ("x", "y")}
    classes = num_classes
    if kind == "classification" and y.ndim == 1 and classes is None:
        classes = int(y.max()) + 1  # all labels, not just train's
    return _finish(xp.stem, arrays, where, classes, normalise, task=task, metric=metric)


def digits(seed: int = 0, normalise: bool = True) -> Dataset:
    """sklearn's 1797 8x8 digits as a plain 10-class task (1 x 8 x 8), split 70/15/15, seeded."""
    images, labels = _digits_base()
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(images))
    parts = np.split(perm, [int(0.70 * len(perm)), int(0.85 * len(perm))])
    arrays: dict[str, np.ndarray] = {}
    for split, idx in zip(SPLITS, parts, strict=False):
        arrays[f"{split}_x"] = images[idx][:, None]  # (n, 1, 8, 8)
        arrays[f"{split}_y"] = labels[idx]
    return _finish("digits10", arrays, {k: f"digits10 ({k})" for k in KEYS}, 10, normalise)


def digits_task(seed: int = 0, sizes: tuple[int, int, int] = (5000, 1000, 1000), count: int = 2,
                normalise: bool = True) -> Dataset:
    """AddNIST in miniature, with no download: ``count`` 8x8 digits stacked as channels, label =
    their sum (9 * count + 1 classes).

    The 1797 base images are first split 70/15/15 into disjoint pools, and each split draws its
    tuples from its own pool only, so no base image is seen in more than one split. With two
    digits (the default, "digits") a small ResNet reaches ~90% validation accuracy in seconds
    on a CPU, leaving a search room to improve; three digits ("digits3", AddNIST's channel
    count) is far harder with this little data.
    """
    images, digits = _digits_base()
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(images))
    pools = np.split(perm, [int(0.70 * len(perm)), int(0.85 * len(perm))])
    arrays: dict[str, np.ndarray] = {}
    for split, pool, size in zip(SPLITS, pools, sizes, strict=False):
        pick = pool[rng.integers(0, len(pool), size=(size, count))]  # (size, count) base-image indices
        arrays[f"{split}_x"] = images[pick]                            # (size, count, 8, 8)
        arrays[f"{split}_y"] = digits[pick].sum(axis=1)
    name = "digits" if count == 2 else f"digits{count}"
    where = {k: f"{name} ({k})" for k in KEYS}
    return _finish(name, arrays, where, 9 * count + 1, normalise)


@functools.lru_cache(maxsize=1)
def _digits_base() -> tuple[np.ndarray, np.ndarray]:
    """The 1797 images and labels, read from the file scikit-learn ships them in.

    Reading the file (10 ms) rather than calling ``sklearn.datasets.load_digits`` spares every
    search worker importing scikit-learn (0.7 s); where a scikit-learn release moves the file,
    ``load_digits`` reads it (tests/test_data.py checks the two agree).
    """
    spec = importlib.util.find_spec("sklearn")  # finds the package without importing it
    where = spec.submodule_search_locations if spec is not None else None
    path = Path(where[0]) / "datasets" / "data" / "digits.csv.gz" if where else None
    if path is not None and path.is_file():
        table = np.loadtxt(path, delimiter=",")  # 64 pixels, then the label
        images, labels = table[:, :-1].reshape(-1, 8, 8), table[:, -1]
    else:
        from sklearn.datasets import load_digits

        base = load_digits()
        images, labels = base.images, base.target
    return images.astype(np.float32), labels.astype(np.int64)


def load_data(spec: str, seed: int = 0, normalise: bool = True, task: str | None = None,
              metric: str | None = None) -> Dataset:
    """Resolve a data spec: ``"digits"`` (two-digit sums), ``"digits3"``, ``"digits10"``, an Unseen-NAS
    folder, a ``.npz`` file, or ``"x.npy,y.npy"``.

    ``seed`` only matters where the loader draws a split (``digits``, an x/y pair). ``task`` and
    ``metric`` (runtime/task.py's names) override what the targets imply.
    """
    if spec in ("digits", "digits3", "digits10"):
        return _load(spec, seed, normalise).with_task(task, metric)
    return _load(spec, seed, normalise, task, metric)


def _load(spec: str, seed: int, normalise: bool, task: str | None = None, metric: str | None = None) -> Dataset:
    if spec == "digits":
        return digits_task(seed, normalise=normalise)
    if spec == "digits3":
        return digits_task(seed, (3000, 600, 600), count=3, normalise=normalise)
    if spec == "digits10":
        return digits(seed, normalise=normalise)
    if "," in spec and not Path(spec).exists():
        x_path, _, y_path = spec.partition(",")
        return load_pair(x_path.strip(), y_path.strip(), seed, normalise=normalise, task=task, metric=metric)
    p = Path(spec)
    if p.is_dir():
        return load_unseen_nas(p, normalise=normalise, task=task, metric=metric)
    expected = 'expected "digits", "digits3", "digits10", an Unseen-NAS folder, a .npz file or "x.npy,y.npy"'
    if p.suffix == ".npz":
        return load_npz(p, normalise=normalise, task=task, metric=metric)
    if not p.exists():
        raise DataError(f"{spec}: error: no such file or folder; {expected}")
    raise DataError(f"{spec}: error: unknown data format; {expected}")


@functools.lru_cache(maxsize=2)
def load_data_cached(spec: str, seed: int = 0, normalise: bool = True, task: str | None = None,
                     metric: str | None = None) -> Dataset:
    """``load_data`` memoised per process, for persistent evaluation workers; treat arrays as read-only."""
    return load_data(spec, seed, normalise, task, metric)
