"""einc.Study: ask and tell over the search's own scheduler and journal.

A Study's journal is the one a search with the same settings writes (proposals from exactly the
results before k - lag, in proposal order), so it resumes by replay, and telling results in any
order within the lag gives the same trials.
"""

from __future__ import annotations

import math
import random

import pytest

import einc
from einc.runtime.journal import Journal
from einc.runtime.search import SearchConfig
from einc.runtime.study import Study, StudyError
from einc.runtime.workers import InlineEvaluator

SMALL = dict(max_params=100_000, max_flops=5_000_000, max_activations=200_000)
SHAPE = (3, 8, 8)
RE = dict(input_shape=SHAPE, strategy="re", population=3, tournament=2, lag=2, seed=4, **SMALL)


def score(arch) -> float:
    return -arch.infer(SHAPE).params


def neg_params(arch, ctx):
    return -arch.infer(ctx.input_shape).params


def _lines(folder, kind: str) -> list[tuple]:
    return [(r["index"], r["arch"], r.get("metrics", {}).get("score"), r.get("duplicate_of"))
            for r in Journal(folder / "journal.jsonl").records() if r["kind"] == kind]


def _drive(study: Study, count: int, rng: random.Random | None = None) -> None:
    """Ask ``count`` trials; keep up to lag + 1 open and tell them in random order, or in turn without ``rng``."""
    open_: list = []
    asked = 0
    while asked < count or open_:
        if asked < count:
            try:
                open_.append(study.ask())
                asked += 1
                continue
            except StudyError:
                pass  # a result is needed first: tell one
        t = open_.pop(rng.randrange(len(open_)) if rng else 0)
        study.tell(t, score(t.arch))


def test_ask_and_tell_give_the_best_and_the_trials():
    study = einc.Study(**RE)
    t = study.ask()
    assert isinstance(t, einc.Trial) and isinstance(t.arch, einc.Architecture) and t.epochs == SearchConfig.epochs
    assert t.folder.is_dir() and study.open == [0]
    result = study.tell(t, {"score": 2.5, "loss": 0.1})
    assert isinstance(result, einc.TrialResult)
    assert (result.index, result.score, result.metrics, result.ok) == (0, 2.5, {"score": 2.5, "loss": 0.1}, True)
    t1 = study.ask()
    study.tell(t1, 7)
    assert study.best.index == 1 and [r.index for r in study.trials] == [0, 1] and study.open == []
    study.close()
    assert not t.folder.exists()  # a Study without out keeps nothing


def test_minimize_picks_the_smallest_score():
    study = Study(minimize=True, **RE)
    for value in (3.0, -1.0, 2.0):
        study.tell(study.ask(), value)
    assert study.best.score == -1.0


def test_an_exception_or_a_bad_value_is_a_failed_trial_with_its_reason():
    study = Study(**RE)
    a, b, c = study.ask(), study.ask(), study.ask()
    assert study.tell(a, ValueError("out of memory")).reason == "ValueError: out of memory"
    assert study.tell(b, math.nan).reason == "ObjectiveError: the objective's score is nan, not a finite number"
    assert study.tell(c, {"score": 1, "x": object()}).reason.startswith("TypeError: the told metrics are not plain")
    assert [r.ok for r in study.trials] == [False, False, False] and study.best is None
    with pytest.raises(StudyError, match="trial 1 was told already"):
        study.tell(b, 1.0)
    with pytest.raises(StudyError, match="trial 9 is not open: tell a trial that ask"):
        study.tell(9, 1.0)


def test_at_most_lag_plus_one_trials_are_open_and_the_error_names_the_trial_to_tell():
    study = Study(**{**RE, "population": 10})
    trials = [study.ask() for _ in range(3)]  # lag 2: trials 0, 1, 2 need no result
    with pytest.raises(StudyError, match=r"tell trial 0 first: trial 3 is proposed from the results of the trials "
                                         r"before 1 \(lag=2\).*at most lag \+ 1 = 3 trials can be open"):
        study.ask()
    study.tell(trials[1], 1.0)  # out of turn: kept, but trial 0 is still the one needed
    with pytest.raises(StudyError, match="tell trial 0 first"):
        study.ask()
    study.tell(trials[0], 1.0)
    assert study.ask().index == 3 and study.ask().index == 4  # 3 needs 0's result, 4 needs 1's


def test_evolution_needs_a_result_of_its_initial_population_before_it_mutates():
    study = Study(**{**RE, "lag": 8})
    first = [study.ask() for _ in range(3)]
    with pytest.raises(StudyError, match=r"tell trial 0 first: regularised evolution has proposed its initial "
                                         r"population \(population=3\)"):
        study.ask()
    study.tell(first[0], 1.0)
    assert study.ask().index == 3


def test_a_budget_bounds_the_trials_asked():
    study = Study(budget=2, **RE)
    a, b = study.ask(), study.ask()
    with pytest.raises(StudyError, match="the budget of 2 trials is spent"):
        study.ask()
    study.tell(b, 1.0)
    study.tell(a, 2.0)
    assert study.best.index == 0


def test_the_journal_is_the_one_a_search_writes_and_the_order_of_telling_does_not_matter(tmp_path):
    einc.search(neg_params, budget=12, workers=1, out=tmp_path / "search", evaluator=InlineEvaluator(), **RE)
    in_turn = Study(budget=12, out=tmp_path / "in_turn", **RE)
    _drive(in_turn, 12)
    shuffled = Study(budget=12, out=tmp_path / "shuffled", **RE)
    _drive(shuffled, 12, random.Random(0))
    for kind in ("proposal", "eval"):
        assert _lines(tmp_path / "in_turn", kind) == _lines(tmp_path / "search", kind) == \
            _lines(tmp_path / "shuffled", kind)
    assert len(_lines(tmp_path / "search", "eval")) >= 12
    assert any(r["origin"] == "mutation" for r in Journal(tmp_path / "search" / "journal.jsonl").records()
               if r["kind"] == "proposal")


def test_a_study_resumes_from_its_folder_and_asks_again_what_was_never_told(tmp_path):
    whole = Study(budget=10, out=tmp_path / "whole", **RE)
    _drive(whole, 10)
    first = Study(budget=10, out=tmp_path / "cut", **RE)
    a, b, c = first.ask(), first.ask(), first.ask()
    first.tell(b, score(b.arch))  # told out of turn: waits in journal.jsonl.pending
    first.tell(a, score(a.arch))
    d = first.ask()
    del first  # the process ends with c and d open
    again = Study(budget=10, out=tmp_path / "cut", **RE)
    assert [again.ask().index, again.ask().index] == [c.index, d.index]  # asked again first
    assert again.best.index in (a.index, b.index) and len(again.trials) == 2
    for t in (c, d):
        again.tell(t.index, score(t.arch))
    _drive(again, 10 - 4)
    for kind in ("proposal", "eval"):
        assert _lines(tmp_path / "cut", kind) == _lines(tmp_path / "whole", kind)


def test_another_studys_folder_is_refused(tmp_path):
    Study(out=tmp_path, **RE).ask()
    with pytest.raises(StudyError, match=r"holds another search \(seed 4 \(now 5\)\)"):
        Study(out=tmp_path, **{**RE, "seed": 5})
    einc.search(neg_params, budget=2, out=tmp_path / "s", evaluator=InlineEvaluator(), **RE)
    with pytest.raises(StudyError, match="holds another search"):
        Study(budget=2, out=tmp_path / "s", **RE)
