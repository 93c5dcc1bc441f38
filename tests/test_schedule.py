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


def test_a_straggler_does_not_block_the_other_workers(tmp_path):
    s = scheduler(tmp_path / "j", strategy="rs", budget=10, workers=2, seeds=())
    first = []

    def duration(arch: str) -> float:
        first.append(arch)
        return 100.0 if arch == first[0] else 1.0

    ev = FakeEvaluator(workers=2, duration=duration)
    s.run(ev)
    evals = [r for r in Journal(tmp_path / "j").records() if r["kind"] == "eval"]
    assert evals[-1]["index"] == 0  # the straggler finishes last...
    others = evals[:-1]
    assert len(others) == 9 and all(r["finished"] - ev.origin <= 9.01 for r in others)  # ...meanwhile
    assert {r["worker"] for r in others} == {"1"}  # the free worker never waited for it


def test_evolution_proposes_whenever_a_worker_is_free(tmp_path):
    s = scheduler(tmp_path / "j", budget=20, workers=3, seeds=())
    ev = FakeEvaluator(workers=3, duration=uneven)
    s.run(ev)
    records = check_consistent(tmp_path / "j", 20)
    # no generation barrier: until the budget is proposed, every result is followed at once by a new proposal
    kinds = [r["kind"] for r in records]
    last = max(i for i, k in enumerate(kinds) if k == "proposal")
    assert kinds[:3] == ["proposal"] * 3
    assert all(kinds[i + 1] == "proposal" for i in range(last) if kinds[i] == "eval")
    trained = [r for r in records if r["kind"] == "eval" and "duplicate_of" not in r]
    phase = max(r["finished"] for r in trained) - min(r["started"] for r in trained)
    busy = sum(r["seconds"] for r in trained) / (3 * phase)
    assert busy > 0.9


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
        if workers == 1:  # one worker: events alternate, so the resumed journal is the uninterrupted one
            strip = [{k: v for k, v in r.items() if k not in ("started", "finished")}
                     for r in Journal(part).records()]
            assert strip == [{k: v for k, v in r.items() if k not in ("started", "finished")}
                             for r in Journal(whole).records()]


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
