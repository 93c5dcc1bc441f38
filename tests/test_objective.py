"""A user's own objective: its return values, loading it by name, and searches it scores.

Searches here run their jobs in this process (InlineEvaluator) with tiny objectives that train
nothing; real worker processes and the CLI are the ``slow`` tests at the end.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

import einc
from einc.runtime.goal import ACCURACY, Goal
from einc.runtime.journal import Journal
from einc.runtime.objective import Context, ObjectiveError, load_objective, metrics, ship, unship
from einc.runtime.search import SearchConfig, SearchError, run_search
from einc.runtime.study import StudyError
from einc.runtime.workers import InlineEvaluator

from conftest import evals

SMALL = dict(max_params=100_000, max_flops=5_000_000, max_activations=200_000)
SHAPE = (3, 8, 8)


def neg_params(arch, ctx):
    return -arch.infer(ctx.input_shape).params


# --------------------------------------------------------------------------- return values


def test_a_number_or_a_dict_with_score_becomes_the_journaled_metrics():
    assert metrics(3) == {"score": 3.0}
    assert metrics(np.float32(0.5)) == {"score": 0.5}
    assert metrics({"score": -2, "acc": np.float64(0.25), "n": np.int64(7), "curve": [1, 2], "bad": math.inf}) == \
        {"score": -2.0, "acc": 0.25, "n": 7, "curve": [1, 2], "bad": None}


def test_a_zero_dim_tensor_is_a_score():
    import torch

    assert metrics({"score": torch.tensor(1.5), "loss": torch.tensor(0.5)}) == {"score": 1.5, "loss": 0.5}


@pytest.mark.parametrize(("value", "says"), [
    (math.nan, "nan, not a finite number"), (-math.inf, "-inf"), (None, "None, not a number"),
    (True, "True, not a number"), ("0.5", "'0.5', not a number"), ({"acc": 1}, 'without "score" (its keys: acc)'),
    (np.array([1.0, 2.0]), "not one number"), ({"score": 1, 2: 3}, "metric named 2"),
])
def test_anything_else_is_an_objective_error_saying_what_came_back(value, says):
    with pytest.raises(ObjectiveError, match=None) as e:
        metrics(value)
    assert says in str(e.value)


# --------------------------------------------------------------------------- loading and shipping


def test_a_file_function_loads_by_path_and_ships_by_value(tmp_path):
    file = tmp_path / "my_objective.py"
    file.write_text("SCALE = 3\n\ndef f(arch, ctx):\n    return SCALE\n")
    fn = load_objective(f"{file}:f")
    assert fn(None, None) == 3
    assert b"my_objective" not in ship(fn) or unship(ship(fn))(None, None) == 3
    file.write_text("def f(arch, ctx):\n    return 4\n")  # shipped by value: the worker never reads the file
    assert unship(ship(fn))(None, None) == 3


def test_a_module_function_loads_by_name():
    assert load_objective("math:sqrt")(4) == 2


@pytest.mark.parametrize(("ref", "says"), [
    ("f", "name it FILE.py:FUNC or module:FUNC"), ("nowhere.py:f", "nowhere.py: error: no such objective file"),
    ("einc_no_such_module:f", "cannot import module einc_no_such_module"), ("math:nope", "no function nope"),
    ("math:pi", "pi is a float, not a function"), ("__main__:f", "pass the function again from Python"),
])
def test_a_bad_objective_name_is_one_line(ref, says):
    with pytest.raises(ObjectiveError) as e:
        load_objective(ref)
    assert says in str(e.value) and "\n" not in str(e.value)


def test_a_file_that_fails_to_run_says_so(tmp_path):
    file = tmp_path / "broken.py"
    file.write_text("raise RuntimeError('no GPU here')\ndef f(arch, ctx):\n    return 1\n")
    with pytest.raises(ObjectiveError, match="running the objective file failed: RuntimeError: no GPU here"):
        load_objective(f"{file}:f")


def test_a_closure_over_an_unpicklable_object_cannot_ship():
    lock = __import__("threading").Lock()
    with pytest.raises(ObjectiveError, match="cannot be sent to the workers"):
        ship(lambda arch, ctx: lock.locked())


# --------------------------------------------------------------------------- searches


def _config(**kw) -> SearchConfig:
    return SearchConfig(**{**dict(data=None, input_shape=SHAPE, objective="einc_no_such_module:f", strategy="rs",
                                  budget=5, seed=3, **SMALL), **kw})


def test_the_objective_scores_every_candidate_and_sees_its_context(tmp_path):
    def f(arch, ctx):  # shipped by value, as to a worker: what it saw comes back in its metrics
        assert isinstance(arch, einc.Architecture) and isinstance(ctx, Context)
        (ctx.folder / "model.txt").write_text(arch.text)
        return {"score": -arch.infer(ctx.input_shape).params, "flops": arch.infer(ctx.input_shape).flops,
                "ctx": [ctx.index, list(ctx.input_shape), ctx.seed, ctx.device, ctx.epochs, ctx.time_limit,
                        ctx.data]}

    summary = run_search(_config(time_limit=30), tmp_path, evaluator=InlineEvaluator(), objective=f)
    rs = evals(tmp_path)
    assert len(rs) == 5 and all(r["status"] == "ok" for r in rs)
    assert all(r["metrics"]["score"] == -r["params"] and r["metrics"]["flops"] == r["flops"] for r in rs)
    assert [r["metrics"]["ctx"] for r in rs] == [[i, list(SHAPE), 3, "cpu", 8, 30, None] for i in range(5)]
    assert [(tmp_path / "trials" / str(i) / "model.txt").read_text() for i in range(5)] == [r["arch"] for r in rs]
    kinds = [r["kind"] for r in Journal(tmp_path / "journal.jsonl").records()]
    assert "final" not in kinds  # no retrain on a test split: the objective is the whole evaluation
    assert summary["input_shape"] == list(SHAPE)
    assert "no final retrain on train + validation and test: your objective is the whole evaluation" in \
        summary["notes"]


def test_goal_is_the_score_in_the_asked_direction():
    assert _config().goal() == Goal("score", False) and _config(minimize=True).goal() == Goal("score", True)
    assert SearchConfig().goal() == ACCURACY


def test_an_exception_or_a_bad_score_is_a_failed_evaluation_with_its_reason(tmp_path):
    def f(arch, ctx):
        params = arch.infer(ctx.input_shape).params
        if ctx.index == 1:
            raise ValueError(f"{params} parameters is too many")
        return math.nan if ctx.index == 2 else -params

    run_search(_config(), tmp_path, evaluator=InlineEvaluator(), objective=f)
    rs = evals(tmp_path)
    assert [r["status"] for r in rs] == ["ok", "failed", "failed", "ok", "ok"]
    assert rs[1]["reason"].startswith("ValueError: ") and rs[1]["reason"].endswith("parameters is too many")
    assert rs[2]["reason"] == "ObjectiveError: the objective's score is nan, not a finite number"


def test_fidelity_is_the_epochs_the_objective_is_asked_for(tmp_path):
    def f(arch, ctx):
        return ctx.epochs * 1000 - arch.infer(ctx.input_shape).params / 1000

    run_search(_config(fidelity=(1, 3), eta=2, budget=8, lag=0), tmp_path, evaluator=InlineEvaluator(), objective=f)
    rs = evals(tmp_path)
    assert {r["epochs"] for r in rs} == {1, 3}
    assert all(r["metrics"]["score"] == r["epochs"] * 1000 - r["params"] / 1000 for r in rs)


def test_with_data_the_objective_gets_the_loaded_dataset(tmp_path):
    def f(arch, ctx):
        return float(ctx.data.train_x.shape[1:] == ctx.input_shape) + ctx.data.num_classes

    run_search(_config(data="digits10", input_shape=None, budget=2), tmp_path, evaluator=InlineEvaluator(),
               objective=f)
    assert [r["metrics"]["score"] for r in evals(tmp_path)] == [11.0, 11.0]

    def g(arch, ctx):  # the data as the search's task, as einc's own training would see it
        return {"score": 1, "task": [ctx.data.task.kind, ctx.data.task.metric]}

    run_search(_config(data="digits10", input_shape=None, budget=1, metric="error"), tmp_path / "task",
               evaluator=InlineEvaluator(), objective=g)
    assert evals(tmp_path / "task")[0]["metrics"]["task"] == ["classification", "error"]


def test_settings_that_cannot_search_are_one_line_errors(tmp_path):
    with pytest.raises(SearchError, match="needs the candidates' input shape"):
        SearchConfig(data=None, objective="x.py:f")
    with pytest.raises(SearchError, match="needs an objective of your own"):
        SearchConfig(data=None, input_shape=SHAPE)
    with pytest.raises(SearchError, match="is not the data's"):
        run_search(_config(data="digits10", input_shape=SHAPE), tmp_path, evaluator=InlineEvaluator(),
                   objective=neg_params)
    with pytest.raises(ObjectiveError, match="cannot import module einc_no_such_module"):
        run_search(_config(), tmp_path / "b", evaluator=InlineEvaluator())
    assert not (tmp_path / "b").exists()  # a bad objective leaves no folder behind


# --------------------------------------------------------------------------- einc.search


def test_einc_search_returns_the_best_and_every_trial():
    result = einc.search(neg_params, input_shape=SHAPE, strategy="rs", budget=4, seed=3, evaluator=InlineEvaluator(),
                         **SMALL)
    assert [t.index for t in result.trials] == [0, 1, 2, 3] and result.out is None
    assert result.best is not None and result.best.score == max(t.score for t in result.trials)
    assert result.best.score == -result.best.params and result.best.metrics == {"score": result.best.score}
    assert isinstance(result.best.arch, einc.Architecture)
    low = einc.search(neg_params, input_shape=SHAPE, strategy="rs", budget=4, seed=3, minimize=True,
                      evaluator=InlineEvaluator(), **SMALL)
    assert low.best.score == min(t.score for t in low.trials)
    assert "einc.Architecture" not in repr(low.best) and low.best.arch.text in repr(low.best)


def test_einc_search_with_out_resumes_and_refuses_another_search(tmp_path):
    kw = dict(input_shape=SHAPE, strategy="re", population=3, tournament=2, budget=6, seed=1, out=tmp_path, **SMALL)
    first = einc.search(neg_params, evaluator=InlineEvaluator(), **kw)
    assert first.out == tmp_path and (tmp_path / "config.json").exists()
    lines = (tmp_path / "journal.jsonl").read_text().count('"kind": "eval"')
    again = einc.search(neg_params, evaluator=InlineEvaluator(), **kw)  # complete: nothing runs again
    assert [t.arch.text for t in again.trials] == [t.arch.text for t in first.trials]
    assert (tmp_path / "journal.jsonl").read_text().count('"kind": "eval"') == lines
    with pytest.raises(StudyError, match=r"holds another search \(budget 6 \(now 7\)\)"):
        einc.search(neg_params, evaluator=InlineEvaluator(), **{**kw, "budget": 7})
    with pytest.raises(StudyError, match="unknown setting max_param;"):
        einc.search(neg_params, input_shape=SHAPE, max_param=3)
    with pytest.raises(ObjectiveError, match="not int"):
        einc.search(3, input_shape=SHAPE)


def test_einc_search_without_input_shape_takes_the_grammars():
    result = einc.search(lambda arch, ctx: ctx.input_shape[1], strategy="rs", budget=1, evaluator=InlineEvaluator(),
                         **SMALL)
    assert result.best.score == 32  # einspace declares (3, 32, 32)


# --------------------------------------------------------------------------- real processes


SCRIPT = '''
import json, sys
import einc

def objective(arch, ctx):  # lives in __main__: shipped to the workers by value
    return {"score": -arch.infer(ctx.input_shape).params, "worker": __import__("os").environ.get("EINC_WORKER")}

if __name__ == "__main__":
    workers = int(sys.argv[1])
    r = einc.search(objective, input_shape=(3, 8, 8), strategy="re", population=4, tournament=2, budget=8,
                    workers=workers, seed=5, lag=2, max_params=100_000, max_flops=5_000_000,
                    max_activations=200_000)
    study = einc.Study(input_shape=(3, 8, 8), strategy="re", population=4, tournament=2, seed=5, lag=2,
                       max_params=100_000, max_flops=5_000_000, max_activations=200_000)
    for _ in range(8):
        trial = study.ask()
        study.tell(trial, objective(trial.arch, einc.Context((3, 8, 8), 5, "cpu", 1, None, None, trial.folder,
                                                             trial.index)))
    print(json.dumps({"best": [r.best.index, r.best.score], "archs": [t.arch.text for t in r.trials],
                      "workers": sorted({t.metrics["worker"] for t in r.trials}),
                      "study": [t.arch.text for t in study.trials]}))
'''


@pytest.mark.slow
def test_a_main_objective_runs_in_one_and_two_workers_with_the_same_results(tmp_path):
    script = tmp_path / "search_script.py"
    script.write_text(SCRIPT)
    runs = {}
    for workers in (1, 2):
        p = subprocess.run([sys.executable, str(script), str(workers)], check=False, capture_output=True, text=True,
                           timeout=120, cwd=tmp_path)
        assert p.returncode == 0, p.stderr
        runs[workers] = json.loads(p.stdout.strip().splitlines()[-1])
    assert runs[1]["archs"] == runs[2]["archs"] and len(runs[1]["archs"]) == 8
    assert runs[1]["best"] == runs[2]["best"]
    assert runs[1]["study"] == runs[2]["study"] == runs[1]["archs"]  # ask and tell: the same trials
    assert runs[1]["workers"] == ["0"] and runs[2]["workers"] == ["0", "1"]


RAY_SCRIPT = '''
import json, logging
from ray.cluster_utils import Cluster
import einc
from einc.runtime.cluster import RayEvaluator

def objective(arch, ctx):  # lives in __main__: Ray actors get it by value too
    import ray
    gcs = ray.get_runtime_context().gcs_address if ray.is_initialized() else None
    return {"score": -arch.infer(ctx.input_shape).params, "gcs": gcs}

if __name__ == "__main__":
    # another cluster running on the machine (`ray start`, a test's): address "local" must not join it
    other = Cluster(initialize_head=True, head_node_args=dict(num_cpus=1, include_dashboard=False))
    try:
        kw = dict(input_shape=(3, 8, 8), strategy="rs", budget=4, seed=5, workers=2, max_params=100_000)
        with RayEvaluator(2, address="local") as ev:
            on_ray = einc.search(objective, evaluator=ev, **kw)
        local = einc.search(objective, **kw)
    finally:
        other.shutdown()
    print(json.dumps({"ray": [t.score for t in on_ray.trials], "local": [t.score for t in local.trials],
                      "reasons": [t.reason for t in on_ray.trials], "other": other.address,
                      "gcs": sorted({t.metrics.get("gcs") for t in on_ray.trials if t.ok})}))
'''


@pytest.mark.slow
def test_a_main_objective_runs_on_ray_as_locally(tmp_path):
    """On Ray's own local runtime, even while another cluster runs here (ray.init(address=None) would
    join that one, whose workers are not the search's: every evaluation failed as WorkerDied)."""
    pytest.importorskip("ray")
    script = tmp_path / "ray_script.py"
    script.write_text(RAY_SCRIPT)
    p = subprocess.run([sys.executable, str(script)], check=False, capture_output=True, text=True, timeout=180,
                       cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["reasons"] == [None] * 4
    assert out["ray"] == out["local"] and all(s <= 0 for s in out["ray"])
    assert len(out["gcs"]) == 1 and out["gcs"][0] != out["other"]


class _Interrupted(InlineEvaluator):
    """Runs ``count`` jobs, then stops the search as Ctrl-C would."""

    def __init__(self, count: int) -> None:
        super().__init__()
        self.count = count

    def results(self):
        for n, outcome in enumerate(super().results()):
            if n == self.count:
                raise KeyboardInterrupt
            yield outcome


def test_an_interrupted_einc_search_resumes_into_the_uninterrupted_journal(tmp_path):
    kw = dict(input_shape=SHAPE, strategy="re", population=3, tournament=2, budget=8, seed=2, lag=2, **SMALL)
    whole = einc.search(neg_params, out=tmp_path / "whole", evaluator=InlineEvaluator(), **kw)
    with pytest.raises(KeyboardInterrupt):
        einc.search(neg_params, out=tmp_path / "cut", evaluator=_Interrupted(3), **kw)
    resumed = einc.search(neg_params, out=tmp_path / "cut", workers=2, evaluator=InlineEvaluator(), **kw)
    assert [(t.arch.text, t.score) for t in resumed.trials] == [(t.arch.text, t.score) for t in whole.trials]
    assert json.loads((tmp_path / "cut" / "config.json").read_text())["workers"] == 2  # how it runs may change

    def lines(folder):
        return [(r["kind"], r["index"], r["arch"]) for r in Journal(folder / "journal.jsonl").records()
                if r["kind"] in ("proposal", "eval")]

    assert lines(tmp_path / "cut") == lines(tmp_path / "whole")
