"""Each loader on small files written here; every malformed file is one located DataError."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from einc.errors import EinError
from einc.runtime.data import DataError, digits_task, load_data, load_npz, load_pair, load_unseen_nas

SIZES = {"train": 20, "valid": 6, "test": 6}


def arrays(shape=(2, 4, 4), classes=3, seed=0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in SIZES.items():
        out[f"{split}_x"] = rng.normal(2.0, 3.0, size=(n, *shape)).astype(np.float32)
        out[f"{split}_y"] = np.arange(n) % classes
    return out


def write_folder(path: Path, data: dict[str, np.ndarray]) -> Path:
    path.mkdir(exist_ok=True)
    for key, value in data.items():
        np.save(path / f"{key}.npy", value)
    return path


def write_npz(path: Path, data: dict[str, np.ndarray]) -> Path:
    np.savez(path, **data)
    return path


# ---------------------------------------------------------------- good files


def test_unseen_nas_folder(tmp_path):
    d = load_unseen_nas(write_folder(tmp_path / "addnist", arrays()))
    assert d.name == "addnist" and d.input_shape == (2, 4, 4) and d.num_classes == 3
    assert d.train_x.dtype == np.float32 and d.train_y.dtype == np.int64
    assert [len(d.train_y), len(d.valid_y), len(d.test_y)] == [20, 6, 6]


def test_normalisation_uses_training_statistics_per_channel(tmp_path):
    raw = arrays()
    raw["train_x"][:, 1] += 100.0  # channel 1 far from channel 0
    d = load_unseen_nas(write_folder(tmp_path / "d", raw))
    assert np.allclose(d.train_x.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    assert np.allclose(d.train_x.std(axis=(0, 2, 3)), 1, atol=1e-4)
    mean = raw["train_x"].mean(axis=(0, 2, 3), dtype=np.float64)[None, :, None, None]
    std = raw["train_x"].std(axis=(0, 2, 3), dtype=np.float64)[None, :, None, None]
    assert np.allclose(d.valid_x, (raw["valid_x"] - mean) / std, atol=1e-4)  # train stats, not valid's
    same = load_unseen_nas(tmp_path / "d", normalise=False)
    assert np.array_equal(same.valid_x, raw["valid_x"])


def test_npz_with_sequence_inputs(tmp_path):
    d = load_npz(write_npz(tmp_path / "seq.npz", arrays(shape=(5, 7))))
    assert d.input_shape == (5, 7) and d.name == "seq"
    assert np.allclose(d.train_x.mean(axis=(0, 1)), 0, atol=1e-5)  # per channel = per last axis


def test_pair_is_split_70_15_15_by_seed(tmp_path):
    x = np.random.default_rng(1).normal(size=(100, 1, 3, 3)).astype(np.float32)
    y = np.arange(100) % 4
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y.astype(np.float64))  # integral floats are fine
    a = load_pair(tmp_path / "x.npy", tmp_path / "y.npy", seed=3, normalise=False)
    assert [len(a.train_y), len(a.valid_y), len(a.test_y)] == [70, 15, 15]
    b = load_pair(tmp_path / "x.npy", tmp_path / "y.npy", seed=3, normalise=False)
    c = load_pair(tmp_path / "x.npy", tmp_path / "y.npy", seed=4, normalise=False)
    assert np.array_equal(a.test_x, b.test_x) and not np.array_equal(a.test_x, c.test_x)
    every = np.concatenate([a.train_x, a.valid_x, a.test_x]).reshape(100, -1)
    assert len(np.unique(every, axis=0)) == 100  # a partition: nothing lost or repeated
    assert a.num_classes == 4
    assert load_data(f"{tmp_path / 'x.npy'},{tmp_path / 'y.npy'}", seed=3).num_classes == 4


def test_load_data_dispatches_on_the_spec(tmp_path):
    assert load_data(str(write_folder(tmp_path / "f", arrays()))).name == "f"
    assert load_data(str(write_npz(tmp_path / "z.npz", arrays()))).name == "z"
    with pytest.raises(DataError, match=r'nope: error: no such file or folder; expected "digits"'):
        load_data(str(tmp_path / "nope"))
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(DataError, match="unknown data format"):
        load_data(str(tmp_path / "notes.txt"))


# ---------------------------------------------------------------- the embedded digits task


def test_digits_are_read_without_importing_sklearn_and_equal_its_loader(monkeypatch):
    import subprocess
    import sys

    from sklearn.datasets import load_digits

    import einc.runtime.data as data

    code = "import sys; from einc.runtime.data import load_data; load_data('digits10'); print(sorted(sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert "'numpy'" in loaded and "sklearn" not in loaded
    data._digits_base.cache_clear()
    images, labels = data._digits_base()
    base = load_digits()
    assert np.array_equal(images, base.images) and np.array_equal(labels, base.target)
    assert images.dtype == np.float32 and labels.dtype == np.int64
    data._digits_base.cache_clear()  # where a release moves the file, sklearn's own loader reads it
    monkeypatch.setattr(data.importlib.util, "find_spec", lambda name: None)
    again, again_labels = data._digits_base()
    assert np.array_equal(again, images) and np.array_equal(again_labels, labels)
    data._digits_base.cache_clear()


def test_digits_task_shapes_labels_and_determinism():
    a, b, c = digits_task(0), digits_task(0), digits_task(1)
    assert a.input_shape == (2, 8, 8) and a.num_classes == 19
    assert a.train_x.shape == (5000, 2, 8, 8) and a.valid_x.shape == a.test_x.shape == (1000, 2, 8, 8)
    for y in (a.train_y, a.valid_y, a.test_y):
        assert y.dtype == np.int64 and y.min() >= 0 and y.max() <= 18
    assert np.array_equal(a.train_x, b.train_x) and np.array_equal(a.test_y, b.test_y)
    assert not np.array_equal(a.train_x, c.train_x)
    assert load_data("digits", seed=1).train_x.shape == c.train_x.shape
    three = load_data("digits3")
    assert three.input_shape == (3, 8, 8) and three.num_classes == 28 and three.train_x.shape[0] == 3000


def test_plain_digits_task_is_seeded_disjoint_and_ten_class():
    a, b = load_data("digits10"), load_data("digits10")
    assert a.input_shape == (1, 8, 8) and a.num_classes == 10
    assert len(a.train_y) + len(a.valid_y) + len(a.test_y) == 1797
    assert np.array_equal(a.train_x, b.train_x)
    assert not np.array_equal(load_data("digits10", seed=1).train_y, a.train_y)
    rows = lambda x: {r.tobytes() for r in x.reshape(len(x), -1)}  # noqa: E731
    assert len(rows(a.test_x) & rows(a.train_x)) < 10  # (a few sklearn digits are exact duplicates)


def test_digits_task_labels_are_digit_sums_and_pools_are_disjoint():
    from sklearn.datasets import load_digits

    base = load_digits()
    lookup = {im.tobytes(): int(t) for im, t in zip(base.images.astype(np.float32), base.target, strict=True)}
    d = digits_task(0, count=3, normalise=False)
    pools = {}
    for split in ("train", "valid", "test"):
        x, y = getattr(d, f"{split}_x"), getattr(d, f"{split}_y")
        images = x.reshape(-1, 8, 8)
        pools[split] = {im.tobytes() for im in images}
        sums = np.array([lookup[im.tobytes()] for im in images]).reshape(-1, 3).sum(axis=1)
        assert np.array_equal(sums, y)
    assert not pools["train"] & pools["valid"] and not pools["train"] & pools["test"]
    assert not pools["valid"] & pools["test"]


# ---------------------------------------------------------------- bad files


def bad(tmp_path: Path, key: str, value: np.ndarray | None) -> Path:
    data = arrays()
    if value is None:
        del data[key]
    else:
        data[key] = value
    return write_folder(tmp_path / "bad", data)


@pytest.mark.parametrize("key, value, message", [
    ("valid_y", None, r'valid_y\.npy: error: missing split file "valid_y\.npy"'),
    ("train_y", np.zeros(19, np.int64), r'train_y\.npy: error: 19 labels for 20 inputs in "train_x"'),
    ("train_x", np.zeros((20, 16), np.float32),
     r"train_x\.npy: error: inputs must be N x C x H x W or N x S x D \(sequences, Col mode\); "
     r"got shape \(20, 16\)"),
    ("train_x", np.zeros((20, 4, 4), np.float32),  # a sequence set (Col mode) beside image splits
     r'valid_x\.npy: error: samples have shape \(2, 4, 4\) but "train_x" samples have shape \(4, 4\)'),
    ("test_y", np.zeros((6, 1), np.int64), r"test_y\.npy: error: labels must be a vector"),
    ("valid_y", np.array([0, 1, 2, 3, 0, 1]), r"valid_y\.npy: error: label 3 of sample 3 is out of range; "
                                              r'"train_y" has classes 0\.\.2'),
    ("train_y", -(np.arange(20) % 2),
     r"train_y\.npy: error: labels must be non-negative; sample 1 has label -1"),
    ("train_y", np.full(20, 0.5), r"train_y\.npy: error: labels must be integers; sample 0 has label 0\.5"),
    ("train_y", np.array(["a"] * 20), r"train_y\.npy: error: labels must be integers, not <U1"),
    ("test_x", np.zeros((6, 3, 4, 4), np.float32), r"test_x\.npy: error: samples have shape \(3, 4, 4\) but "
                                                   r'"train_x" samples have shape \(2, 4, 4\)'),
    ("train_x", np.zeros((0, 2, 4, 4), np.float32), r"train_x\.npy: error: the split is empty"),
])
def test_bad_folder(tmp_path, key, value, message):
    with pytest.raises(DataError, match=message) as err:
        load_unseen_nas(bad(tmp_path, key, value))
    assert "\n" not in str(err.value) and isinstance(err.value, EinError)


@pytest.mark.parametrize("poison", [np.nan, np.inf])
def test_non_finite_inputs(tmp_path, poison):
    x = arrays()["valid_x"]
    x[4, 1, 2, 3] = poison
    message = r"valid_x\.npy: error: inputs contain NaN or inf \(first in sample 4\)"
    with pytest.raises(DataError, match=message):
        load_unseen_nas(bad(tmp_path, "valid_x", x))


def test_unreadable_npy(tmp_path):
    folder = write_folder(tmp_path / "d", arrays())
    (folder / "test_x.npy").write_bytes(b"not an array")
    with pytest.raises(DataError, match=r"test_x\.npy: error: cannot read as a \.npy array"):
        load_unseen_nas(folder)
    np.save(folder / "test_x.npy", np.array([{"a": 1}] * 6, dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match=r"test_x\.npy: error: cannot read"):
        load_unseen_nas(folder)


def test_bad_npz(tmp_path):
    data = arrays()
    del data["test_y"]
    with pytest.raises(DataError, match=r'partial\.npz: error: missing key "test_y"'):
        load_npz(write_npz(tmp_path / "partial.npz", data))
    data = arrays()
    data["valid_y"] = data["valid_y"][:5]
    with pytest.raises(DataError, match=r'short\.npz: "valid_y": error: 5 labels for 6 inputs'):
        load_npz(write_npz(tmp_path / "short.npz", data))
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 junk")
    with pytest.raises(DataError, match=r"junk\.npz: error: cannot read"):
        load_npz(tmp_path / "junk.npz")
    np.save(tmp_path / "single.npy", np.zeros(3))
    (tmp_path / "single.npy").rename(tmp_path / "single.npz")
    with pytest.raises(DataError, match=r"single\.npz: error: holds a single \.npy array"):
        load_npz(tmp_path / "single.npz")


def test_bad_pair(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((10, 1, 2, 2), np.float32))
    np.save(tmp_path / "y.npy", np.zeros(9, np.int64))
    with pytest.raises(DataError, match=r"y\.npy: error: 9 labels for 10 inputs in .*x\.npy"):
        load_pair(tmp_path / "x.npy", tmp_path / "y.npy")
    with pytest.raises(DataError, match=r'missing\.npy: error: missing split file "missing\.npy"'):
        load_pair(tmp_path / "missing.npy", tmp_path / "y.npy")
