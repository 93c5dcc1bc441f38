"""bench/bench_search.py: its pieces on a CPU, and the --quick smoke run end to end."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import bench_search  # noqa: E402  (found on the path set above)

from einc.runtime.data import load_npz  # noqa: E402

pytestmark = pytest.mark.slow  # two real searches: scheduled first (tests/conftest.py)


def test_synthetic_cifar_is_a_valid_learnable_npz(tmp_path):
    path = bench_search.synthetic_cifar(tmp_path / "c.npz", sizes=(200, 40, 40))
    d = load_npz(path)
    assert d.input_shape == (3, 32, 32) and d.num_classes == 10 and len(d.train_y) == 200
    # the class pattern is there: nearest class mean (from train) beats chance on valid by far
    means = np.stack([d.train_x[d.train_y == c].mean(0) for c in range(10)])
    guess = np.argmin(((d.valid_x[:, None] - means[None]) ** 2).sum(axis=(2, 3, 4)), axis=1)
    assert (guess == d.valid_y).mean() > 0.5


def test_digits_subset_keeps_the_task_shape(tmp_path):
    d = load_npz(bench_search.digits_subset(tmp_path / "d.npz", sizes=(100, 30, 30)))
    assert d.input_shape == (2, 8, 8) and len(d.train_y) == 100 and len(d.valid_y) <= 30
    assert d.valid_y.max() < d.num_classes and d.test_y.max() < d.num_classes


def test_busy_is_not_available_without_a_gpu():
    with bench_search.BusySampler(period=0.01) as busy:
        pass
    if busy.source == "n/a":
        assert busy.mean() is None and busy.samples == []
    busy.samples = [(1.0, 50.0), (2.0, 100.0), (3.0, 0.0)]
    assert busy.mean(1.5, 2.5) == 1.0 and busy.mean() == pytest.approx(0.5)


def test_search_config_drops_fields_it_does_not_know(capsys):
    config = bench_search.search_config(budget=3, no_such_field=1)
    assert config.budget == 3
    assert "no no_such_field field" in capsys.readouterr().err


def test_quick_run_prints_both_settings_side_by_side(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert bench_search.main(["--quick", "--tasks", "digits", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "baseline (1 worker)" in text and "best (2 workers)" in text and "evaluations / minute" in text
    figures = json.loads(out.read_text())["digits"]
    for label in ("baseline", "best"):
        run = figures[label]
        assert run["trained"] >= 1 and run["failed"] == 0 and run["evals_per_min"] > 0
        assert run["first_eval_s"] > 0 and run["busy_run"] is None and run["graph_steps"] == 0
