"""``einc.search`` without an objective: einc's own training on data, the path ``einc search`` takes.

Evaluation is faked (conftest.FakeEvaluator), so these check the API, not training."""

from __future__ import annotations

import json

import numpy as np
import pytest

import einc
from einc.runtime.data import load_data
from einc.runtime.study import StudyError

from conftest import TINY, FakeEvaluator


def test_a_search_on_data_returns_trials_scored_by_the_metric_and_the_final_test(tmp_path):
    settings = {k: v for k, v in TINY.items() if k not in ("data", "budget", "seed")}
    result = einc.search(data="digits10", strategy="rs", budget=4, seed=3, out=tmp_path / "o",
                         evaluator=FakeEvaluator(2), **settings)
    assert len(result.trials) == 4 and not result.minimize
    assert all(t.score == t.metrics["val_acc"] for t in result.trials)
    assert result.best is not None and result.best.score == max(t.score for t in result.trials)
    assert result.final is not None and "test_acc" in result.final
    saved = json.loads((tmp_path / "o" / "config.json").read_text())
    assert saved["objective"] is None and saved["data"] == "digits10" and saved["epochs"] == 1


def test_defaults_come_from_the_search_configuration(tmp_path):
    einc.search(data="digits10", strategy="rs", budget=1, out=tmp_path, evaluator=FakeEvaluator(),
                max_params=100_000, max_flops=5_000_000, max_activations=200_000)
    saved = json.loads((tmp_path / "config.json").read_text())
    defaults = einc.runtime.search.SearchConfig()
    assert (saved["lr"], saved["epochs"], saved["population"]) == (defaults.lr, defaults.epochs, defaults.population)


def test_a_loaded_dataset_is_saved_with_the_run_and_resumes(tmp_path):
    data = load_data("digits10").with_task("classification", "error")
    kw = dict(data=data, strategy="rs", budget=3, out=tmp_path, epochs=1, max_params=100_000, max_flops=5_000_000,
              max_activations=200_000)
    first = einc.search(evaluator=FakeEvaluator(), **kw)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["data"] == str((tmp_path / "data.npz").resolve()) and saved["metric"] == "error"
    assert first.minimize  # error is minimised
    with np.load(tmp_path / "data.npz") as z:
        assert np.array_equal(z["train_x"], data.train_x)
    again = einc.search(evaluator=FakeEvaluator(), **kw)  # the same search: its result, nothing retrained
    assert [t.index for t in again.trials] == [t.index for t in first.trials]
    other = load_data("digits10", seed=1)
    with pytest.raises(StudyError, match="made with other data"):
        einc.search(evaluator=FakeEvaluator(), **dict(kw, data=other))
    with np.load(tmp_path / "data.npz") as z:  # the run's own copy is untouched
        assert np.array_equal(z["train_x"], data.train_x)


def test_bad_calls_say_what_to_give():
    with pytest.raises(StudyError, match="needs an objective of your own, or data"):
        einc.search()
    with pytest.raises(StudyError, match="unknown setting epoch;"):
        einc.search(data="digits10", epoch=3)
    with pytest.raises(StudyError, match="give a dataset name or path"):
        einc.search(data=[1, 2, 3])


def _fewest_params(arch, ctx):
    return -arch.infer(ctx.input_shape).params


def test_report_of_an_objective_search_names_the_objective(tmp_path):
    from click.testing import CliRunner

    from einc.cli import main
    from einc.runtime.workers import InlineEvaluator

    einc.search(_fewest_params, input_shape=(1, 8, 8), strategy="rs", budget=2, out=tmp_path,
                evaluator=InlineEvaluator(), max_params=100_000, max_flops=5_000_000)
    r = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert r.output.startswith("rs with objective ") and "_fewest_params" in r.output.splitlines()[0]
    assert "None" not in r.output.splitlines()[0]
