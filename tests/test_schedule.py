"""Steady-state scheduling on a fake evaluator: no training, exact, milliseconds per search."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest

import einc
from einc.notation import show
from einc.runtime.journal import Journal
from einc.runtime.schedule import ReplayError, Scheduler
from einc.runtime.strategies import RandomSearch, RegularisedEvolution
from einc.runtime.workers import Job
from einc.sample import Budget, Sampler

from conftest import FakeEvaluator

G = einc.load("einspace")
SHAPE = (1, 8, 8)
SAMPLER = Sampler(G.table, SHAPE, Budget(max_params=50_000, max_flops=2_000_000, max_activations=100_000))
SEED = G.parse("sequential(routing(im2col(k=3, s=1, p=1), linear(d=16), col2im), relu)", SHAPE).tree


def _job(index, tree, text, epochs) -> Job:
    return Job(str(index), _job, {"arch": text, "epochs": epochs})


def scheduler(journal: Path, strategy: str = "re", budget: int = 12, workers: int = 3, seed: int = 0,
              seeds=(SEED,)) -> Scheduler:
    rng = random.Random(seed)
    strat = (RegularisedEvolution(SAMPLER, rng, population=4, tournament=2, seeds=seeds) if strategy == "re"
             else RandomSearch(SAMPLER, rng, strategy))
    return Scheduler(strat, Journal(journal), budget=budget, workers=workers, job_for=_job,
                     describe=lambda tree: {}, base={"seed": seed})


def uneven(arch: str) -> float:
    return 1.0 + len(arch) % 7  # candidates differ in cost, as real ones do


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


def check_consistent(journal: Path, budget: int) -> list[dict]:
    records = Journal(journal).records()
    proposals = [r for r in records if r["kind"] == "proposal"]
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["index"] for r in proposals] == list(range(len(proposals)))
    assert sorted(r["index"] for r in evals) == list(range(len(proposals)))  # each proposal evaluated once
    trained = [r for r in evals if "duplicate_of" not in r]
    assert len(trained) == budget and len({r["arch"] for r in trained}) == budget  # distinct trainings
    for r in evals:  # an eval line follows its proposal, and a reused result follows its original
        assert records.index(r) > records.index(proposals[r["index"]])
        if "duplicate_of" in r:
            original = next(e for e in evals if e["index"] == r["duplicate_of"])
            assert records.index(r) > records.index(original) and r["metrics"] == original["metrics"]
    return records


def strip(records: list[dict]) -> list[dict]:
    """A journal's records without what timing decides: when, how long, and on which worker."""
    return [{k: v for k, v in r.items() if k not in ("started", "finished", "seconds", "timing", "worker")}
            for r in records]


def noisy(seed: int):
    """Training times that differ from run to run, as real ones do under load."""
    rng = random.Random(seed)
    return lambda arch: 1.0 + len(arch) % 7 + 3 * rng.random()


def test_a_straggler_holds_back_at_most_lag_proposals(tmp_path):
    s = scheduler(tmp_path / "j", strategy="rs", budget=12, workers=2, seeds=())
    s.lag = 4
    first = []

    def duration(arch: str) -> float:
        first.append(arch)
        return 100.0 if arch == first[0] else 1.0

    ev = FakeEvaluator(workers=2, duration=duration)
    s.run(ev)
    evals = [r for r in Journal(tmp_path / "j").records() if r["kind"] == "eval"]
    assert [r["index"] for r in evals] == list(range(12))  # the journal keeps proposal order
    early = [r for r in evals if r["index"] > 0 and r["finished"] - ev.origin <= 4.01]
    assert [r["index"] for r in early] == [1, 2, 3, 4]  # the free worker went on for `lag` proposals...
    assert all(r["started"] - ev.origin > 99.99 for r in evals[5:])  # ...then waited for proposal 0's result


@pytest.mark.parametrize("strategy", ["rs", "re", "sample"])
def test_the_journal_is_the_same_whatever_the_workers_and_their_timing(tmp_path, strategy):
    journals = []
    for run, workers in enumerate((1, 2, 3, 5, 2)):
        path = tmp_path / f"j{run}"
        scheduler(path, strategy=strategy, budget=14, workers=workers, seeds=()).run(
            FakeEvaluator(workers, duration=noisy(run)))
        journals.append(strip(Journal(path).records()))
        assert not Path(str(path) + ".pending").exists()  # every result reached the journal
    assert all(j == journals[0] for j in journals[1:])
    check_consistent(tmp_path / "j0", 14)


def test_proposal_k_sees_exactly_the_results_before_k_minus_lag(tmp_path):
    s = scheduler(tmp_path / "j", budget=20, workers=3, seeds=())
    s.run(FakeEvaluator(3, duration=noisy(0)))
    records = Journal(tmp_path / "j").records()
    for position, r in enumerate(records):
        if r["kind"] == "proposal" and r["index"] >= 4:  # past the population of 4, which needs no results
            seen = [e["index"] for e in records[:position] if e["kind"] == "eval"]
            assert seen == list(range(max(1, r["index"] - s.lag)))


def test_evolution_keeps_its_workers_busy(tmp_path):
    s = scheduler(tmp_path / "j", budget=40, workers=3, seeds=())
    ev = FakeEvaluator(workers=3, duration=uneven)
    s.run(ev)
    records = check_consistent(tmp_path / "j", 40)
    trained = [r for r in records if r["kind"] == "eval" and "duplicate_of" not in r]
    phase = max(r["finished"] for r in trained) - min(r["started"] for r in trained)
    busy = sum(r["seconds"] for r in trained) / (3 * phase)
    assert busy > 0.85


def test_a_result_finished_out_of_turn_survives_a_kill(tmp_path):
    path = tmp_path / "j"
    s = scheduler(path, strategy="rs", budget=10, workers=2, seeds=())
    ev = FakeEvaluator(2, duration=lambda arch: 50.0 if arch == s.proposals[0]["arch"] else 1.0)
    s.advance(ev)  # run by hand, to stop after three outcomes as a kill would
    results = ev.results()
    for _ in range(3):
        s.deliver(next(results))
        s.advance(ev)
    pending = Journal(str(path) + ".pending").records()
    assert {r["index"] for r in pending} == {1, 2, 3} and s.committed == 0  # waiting for proposal 0's turn
    resumed = scheduler(path, strategy="rs", budget=10, workers=2, seeds=())
    resumed.replay(Journal(path).records(), Journal(str(path) + ".pending").records())
    ev2 = FakeEvaluator(2)
    resumed.resubmit(ev2)
    resumed.run(ev2)
    assert not {int(j.key) for j in ev2.submitted} & {1, 2, 3}  # finished before the kill: not trained again
    whole = tmp_path / "whole"
    scheduler(whole, strategy="rs", budget=10, workers=2, seeds=()).run(FakeEvaluator(2))
    assert strip(Journal(path).records()) == strip(Journal(whole).records())


def test_budget_counts_trainings_and_repeats_are_free(tmp_path):
    s = scheduler(tmp_path / "j", budget=6, workers=2)  # population 4, one seed: 3 copies are repeats
    s.run(FakeEvaluator(workers=2, duration=uneven))
    records = check_consistent(tmp_path / "j", 6)
    evals = [r for r in records if r["kind"] == "eval"]
    repeats = [r for r in evals if "duplicate_of" in r]
    assert [r["index"] for r in repeats][:3] == [1, 2, 3] and all(r["duplicate_of"] == 0 for r in repeats[:3])
    assert all(r["seconds"] == 0.0 and r["worker"] is None for r in repeats)
    assert len(evals) - len(repeats) == 6  # six trainings, however many repeats were reused


def test_evolution_redraws_children_that_repeat_earlier_architectures(tmp_path):
    # a tiny space: mutations of a tiny seed often give back architectures already proposed
    g = einc.compile_grammar("start S(shape=(1, 4, 4))\nS -> M\nM -> sequential: M M @ 0.3 | C\n"
                             "C -> relu | norm | identity | softmax\n")
    sampler = Sampler(g.table, (1, 4, 4), Budget(max_nodes=12))
    seed = g.parse("relu", (1, 4, 4)).tree
    strat = RegularisedEvolution(sampler, random.Random(1), population=2, tournament=2, seeds=(seed,))
    s = Scheduler(strat, Journal(tmp_path / "j"), budget=8, workers=1, job_for=_job, describe=lambda t: {},
                  base={})
    s.run(FakeEvaluator())
    records = check_consistent(tmp_path / "j", 8)
    assert sum(r.get("retries", 0) for r in records if r["kind"] == "proposal") > 0


@pytest.mark.parametrize("workers", [1, 3])
def test_replay_after_a_kill_at_every_event(tmp_path, workers):
    budget = 8
    whole = tmp_path / "whole"
    scheduler(whole, budget=budget, workers=workers).run(FakeEvaluator(workers, duration=uneven))
    full = lines(whole)
    for cut in range(len(full) + 1):
        part = tmp_path / f"cut{cut}"
        part.write_text("".join(full[:cut]))
        s = scheduler(part, budget=budget, workers=workers)
        s.replay(Journal(part).records())
        ev = FakeEvaluator(workers, duration=uneven)
        s.resubmit(ev)
        s.run(ev)
        after = lines(part)
        assert after[:cut] == full[:cut]  # nothing before the kill is lost or rewritten
        check_consistent(part, budget)
        done_before = {r["index"] for r in Journal(whole).records()[:cut] if r["kind"] == "eval"}
        assert not {int(j.key) for j in ev.submitted} & done_before  # only what was in flight runs again
        # results in proposal order: the resumed journal is the uninterrupted one, with any number of workers
        assert strip(Journal(part).records()) == strip(Journal(whole).records())


def test_replay_refuses_a_journal_of_another_search(tmp_path):
    scheduler(tmp_path / "j", seed=0, seeds=()).run(FakeEvaluator(3))
    other = scheduler(tmp_path / "j", seed=1, seeds=())
    with pytest.raises(ReplayError, match="another search"):
        other.replay(Journal(tmp_path / "j").records())


def test_an_exhausted_space_stops_instead_of_looping(tmp_path):
    g = einc.compile_grammar("start S(shape=(1, 4, 4))\nS -> relu | norm\n")
    strat = RandomSearch(Sampler(g.table, (1, 4, 4)), random.Random(0), "rs")
    s = Scheduler(strat, Journal(tmp_path / "j"), budget=5, workers=2, job_for=_job, describe=lambda t: {},
                  base={}, max_repeats=30)
    s.run(FakeEvaluator(2))
    evals = [r for r in Journal(tmp_path / "j").records() if r["kind"] == "eval"]
    assert s.exhausted and s.finished_trainings == 2 and len({r["arch"] for r in evals}) == 2
    assert "exhausted" in s.notes[0]


def test_counts_of_repeats_match_the_journal(tmp_path):
    s = scheduler(tmp_path / "j", strategy="sample", budget=10, workers=2, seeds=())
    s.run(FakeEvaluator(2, duration=uneven))
    evals = [r for r in Journal(tmp_path / "j").records() if r["kind"] == "eval"]
    by_arch = Counter(show(s.trees[r["index"]]) for r in evals)
    assert sum(by_arch.values()) == len(evals) and len(by_arch) == 10


def _mf(journal: Path, budget: int = 20, workers: int = 2, strategy: str = "rs") -> Scheduler:
    rng = random.Random(0)
    strat = (RegularisedEvolution(SAMPLER, rng, population=4, tournament=2) if strategy == "re"
             else RandomSearch(SAMPLER, rng, strategy))
    return Scheduler(strat, Journal(journal), budget=budget, workers=workers, job_for=_job,
                     describe=lambda tree: {}, base={}, rungs=(1, 3, 9), eta=3)


def test_successive_halving_promotes_the_best_third_of_each_rung(tmp_path):
    s = _mf(tmp_path / "j", budget=30)
    ev = FakeEvaluator(2, duration=uneven)
    s.run(ev)
    records = Journal(tmp_path / "j").records()
    evals = {r["index"]: r for r in records if r["kind"] == "eval"}
    assert {j.kwargs["epochs"] for j in ev.submitted} == {1, 3, 9}
    for r in evals.values():
        if r["origin"] == "promotion":
            below = evals[r["parent"]]
            assert r["arch"] == below["arch"] and r["rung"] == below["rung"] + 1 and r["epochs"] == (1, 3, 9)[r["rung"]]
            # when promoted, the parent was in the best third of its rung's finished evaluations
            position = records.index(next(p for p in records if p["kind"] == "proposal" and p["index"] == r["index"]))
            rung = [e for e in records[:position] if e["kind"] == "eval" and e.get("rung") == below["rung"]]
            better = sum(e["metrics"]["val_acc"] > below["metrics"]["val_acc"] for e in rung)
            assert better < len(rung) // 3
    rungs = Counter(r["rung"] for r in evals.values())
    assert rungs[0] > rungs[1] > rungs[2] > 0 and sum(rungs.values()) == 30


def test_multi_fidelity_evolution_replays_exactly(tmp_path):
    whole = tmp_path / "whole"
    _mf(whole, budget=16, workers=1, strategy="re").run(FakeEvaluator(1))
    full = lines(whole)
    cut = len(full) // 2
    part = tmp_path / "part"
    part.write_text("".join(full[:cut]))
    s = _mf(part, budget=16, workers=1, strategy="re")
    s.replay(Journal(part).records())
    ev = FakeEvaluator(1)
    s.resubmit(ev)
    s.run(ev)
    strip = lambda rs: [{k: v for k, v in r.items() if k not in ("started", "finished")} for r in rs]  # noqa: E731
    assert strip(Journal(part).records()) == strip(Journal(whole).records())
    assert any(r.get("origin") == "promotion" for r in Journal(whole).records())


def test_multi_fidelity_is_the_same_whatever_the_workers(tmp_path):
    journals = []
    for run, workers in enumerate((1, 3)):
        s = _mf(tmp_path / f"j{run}", budget=24, workers=workers, strategy="re")
        s.run(FakeEvaluator(workers, duration=noisy(run)))
        journals.append(strip(Journal(tmp_path / f"j{run}").records()))
    assert journals[0] == journals[1] and any(r.get("origin") == "promotion" for r in journals[0])
