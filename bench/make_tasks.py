"""Write four small synthetic task datasets, one per kind of task einc searches (runtime/task.py).

    python bench/make_tasks.py data/           # then, for example:
    einc search --data data/sequence --strategy rs --budget 4 --epochs 2 --batch-size 32 --out runs/sequence

* ``sequence/``: an Unseen-NAS folder (``{train,valid,test}_{x,y}.npy``) of sequences, x N x 16 x 8
  (Col mode: 16 positions of 8 channels), 4 classes: which of the first 4 channels is largest on
  average. Inferred: classification.
* ``scalar.npz``: images 1 x 8 x 8, one float target (N x 1): the difference of two quadrants'
  means, plus noise. Inferred: regression (MSE).
* ``darcy.npz``: Darcy-like dense regression: smooth fields 1 x 16 x 16 in, a 3 x 3 box blur of
  them out (1 x 16 x 16). Inferred: dense (relative l2; predicting zeros scores 1.0).
* ``labels.npz``: images 2 x 8 x 8 holding any of 5 fixed patterns under noise; y N x 5 says which.
  Multi-label is only chosen explicitly: ``--task multilabel`` (mAP, or ``--metric auroc``).

Each is learnable in a couple of CPU epochs by a small network, so a search finishes in about a
minute; the sizes are ``--sizes 600,150,150`` (train, valid, test) by default.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

SPLITS = ("train", "valid", "test")


def _split(x: np.ndarray, y: np.ndarray, sizes: tuple[int, int, int]) -> dict[str, np.ndarray]:
    a, b = sizes[0], sizes[0] + sizes[1]
    parts = {"train": slice(0, a), "valid": slice(a, b), "test": slice(b, None)}
    return {f"{s}_{k}": v[parts[s]] for s in SPLITS for k, v in (("x", x), ("y", y))}


def sequence(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    x = rng.normal(size=(n, 16, 8)).astype(np.float32)
    y = rng.integers(0, 4, n)
    x[np.arange(n), :, y] += 0.8  # the class's channel is raised along the whole sequence
    return x, y.astype(np.int64)


def scalar(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    x = rng.normal(size=(n, 1, 8, 8)).astype(np.float32)
    y = x[:, 0, :4, :4].mean(axis=(1, 2)) - x[:, 0, 4:, 4:].mean(axis=(1, 2))
    return x, (2 * y + 0.05 * rng.normal(size=n))[:, None].astype(np.float32)


def _blur(a: np.ndarray) -> np.ndarray:
    """3 x 3 box blur of N x 1 x H x W fields, zero padded."""
    p = np.pad(a, ((0, 0), (0, 0), (1, 1), (1, 1)))
    h, w = a.shape[-2:]
    return sum(p[:, :, i:i + h, j:j + w] for i in range(3) for j in range(3)) / 9


def darcy(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    x = _blur(rng.normal(size=(n, 1, 16, 16))).astype(np.float32) * 3  # smooth inputs, unit-ish scale
    return x, (_blur(x) * 2).astype(np.float32)


def labels(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    patterns = rng.normal(size=(5, 2, 8, 8)).astype(np.float32)
    y = (rng.random((n, 5)) < 0.4).astype(np.float32)
    x = rng.normal(size=(n, 2, 8, 8)).astype(np.float32) + np.einsum("nk,kchw->nchw", y, patterns)
    return x.astype(np.float32), y


def write_all(folder: str | Path, seed: int = 0, sizes: tuple[int, int, int] = (600, 150, 150)) -> dict[str, Path]:
    """Write the four datasets into ``folder``; returns their paths by name."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n = sum(sizes)
    paths = {}
    seq = out / "sequence"
    seq.mkdir(exist_ok=True)
    for key, value in _split(*sequence(rng, n), sizes).items():
        np.save(seq / f"{key}.npy", value)
    paths["sequence"] = seq
    for name, make in (("scalar", scalar), ("darcy", darcy), ("labels", labels)):
        paths[name] = out / f"{name}.npz"
        np.savez(paths[name], **_split(*make(rng, n), sizes))
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folder")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sizes", default="600,150,150", help="train,valid,test samples")
    args = ap.parse_args()
    sizes = tuple(int(v) for v in args.sizes.split(","))
    if len(sizes) != 3 or min(sizes) < 2:
        ap.error("--sizes is three sizes of at least 2, such as 600,150,150")
    for name, path in write_all(args.folder, args.seed, sizes).items():  # type: ignore[arg-type]
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
