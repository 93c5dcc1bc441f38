"""WL features and kernel, the GP surrogate, and the strategies built on them (--strategy bo,
--prefilter, --warmup): on fake evaluations, no training."""

from __future__ import annotations

import random
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

import einc
import einc.testing
from einc.cli import main
from einc.notation import show
from einc.runtime import workers
from einc.runtime.bo import BayesianOptimisation
from einc.runtime.journal import Journal
from einc.runtime.prefilter import PrefilteredEvolution
from einc.runtime.schedule import Scheduler
from einc.runtime.search import SearchConfig, SearchError, run_search
from einc.runtime.strategies import RandomSearch, RegularisedEvolution
from einc.runtime.surrogate import Model, backward, cholesky, forward
from einc.runtime.wl import features, kernel, kernels
from einc.runtime.workers import Job
from einc.sample import Budget, Sampler
from einc.tree import Expansion, Leaf, walk

from conftest import TINY, FakeEvaluator, examples

G = einc.load("einspace")
SHAPE = (1, 8, 8)
SAMPLER = Sampler(G.table, SHAPE, Budget(max_params=50_000, max_flops=2_000_000, max_activations=100_000))
SMALL_BO = dict(initial=4, mutants=8, fresh=2)


def tree(text: str) -> Expansion:
    return G.parse(text, SHAPE).tree


def linears(t: Expansion) -> float:
    """A synthetic objective with regions to find: the number of linear layers."""
    return float(sum(isinstance(n, Leaf) and n.op == "linear" for _, n in walk(t)))


# --------------------------------------------------------------------------- WL features and kernel


@settings(max_examples=examples(40))
@given(st.lists(einc.testing.architectures(G, input_shape=SHAPE), min_size=1, max_size=5))
def test_the_kernel_is_symmetric_psd_and_one_on_the_diagonal(archs):
    feats = [features(a.tree, 3) for a in archs]
    for depth, k in kernels(feats, feats, (0, 1, 3)).items():
        assert np.array_equal(k, k.T) and np.all(np.diag(k) == 1.0), depth
        assert k.min() >= 0 and k.max() <= 1 + 1e-12
        assert np.linalg.eigvalsh(k).min() > -1e-9


def test_identical_trees_score_one_and_order_matters_beyond_depth_zero():
    a, b = tree("sequential(relu, linear(d=16))"), tree("sequential( relu,\n linear(d=16) )")
    assert a is not b and kernel([features(a, 2)], [features(b, 2)], 2)[0, 0] == 1.0
    swapped = tree("sequential(linear(d=16), relu)")
    k = kernels([features(a, 3)], [features(swapped, 3)], (0, 3))
    assert k[0][0, 0] == 1.0  # the same ops, counted
    assert k[3][0, 0] < 1.0   # in another order: the root's subtree three levels deep reaches its leaves
    other = tree("sequential(relu, linear(d=32))")  # a hyperparameter is part of the label
    assert kernel([features(a, 0)], [features(other, 0)], 0)[0, 0] < 1.0


def test_features_of_a_tree_deeper_than_the_recursion_limit():
    deep: Expansion | Leaf = Leaf("relu")
    for _ in range(sys.getrecursionlimit() + 100):
        deep = Expansion("M", "x", (deep,))
    assert sum(features(deep, 2)[0].values()) == sys.getrecursionlimit() + 101


# --------------------------------------------------------------------------- the GP


def test_cholesky_and_solves_agree_with_numpy_and_refuse_what_is_not_positive_definite():
    rng = np.random.default_rng(0)
    m = rng.normal(size=(30, 30))
    a = m @ m.T + np.eye(30)
    low = cholesky(a)
    assert low is not None and np.allclose(low, np.linalg.cholesky(a))
    b = rng.normal(size=(30, 4))
    assert np.allclose(a @ backward(low, forward(low, b)), b)
    assert cholesky(-a) is None


def test_the_gp_interpolates_its_points_and_is_unsure_away_from_them():
    rng = random.Random(0)
    trees = list({show(t): t for t in (SAMPLER.sample(rng) for _ in range(40))}.values())
    model = Model(noises=(1e-6,))
    model.fit(trees[:30], [linears(t) for t in trees[:30]])
    mean, sd = model.predict(trees[:30])
    assert np.allclose(mean, [linears(t) for t in trees[:30]], atol=1e-2) and sd.max() < 1e-2
    _, far = model.predict(trees[30:])
    _, believed = model.predict(trees[30:31], pending=trees[30:31])  # a proposal in flight: no longer unsure
    assert far.max() > 0.05 and believed[0] < 1e-2


def test_a_proxy_that_explains_the_scores_carries_the_model_and_one_that_does_not_is_left_out():
    rng = random.Random(1)
    trees = list({show(t): t for t in (SAMPLER.sample(rng) for _ in range(40))}.values())
    informed = Model(proxy=lambda t: 2 ** linears(t))
    informed.fit(trees[:25], [linears(t) for t in trees[:25]])
    assert informed.posterior is not None and informed.posterior.weight < 1.0
    inside = [t for t in trees[25:] if linears(t) <= max(linears(t) for t in trees[:25])]  # no extrapolation
    mean, _ = informed.predict(inside)
    assert len(inside) > 5 and np.allclose(mean, [linears(t) for t in inside], atol=0.1)
    blind = Model(proxy=lambda t: float(len(show(t)) % 3))  # unrelated to the scores
    blind.fit(trees[:25], [linears(t) for t in trees[:25]])
    assert blind.posterior is not None and blind.posterior.weight == 1.0


# --------------------------------------------------------------------------- strategies on a synthetic objective


def drive(strategy, steps: int, score: Callable[[Expansion], float] = linears) -> list[tuple[str, float]]:
    """Propose and observe in turn (lag 0); (architecture, score) of each proposal."""
    seen: set[str] = set()
    out = []
    for i in range(steps):
        p = strategy.propose(lambda t: show(t) in seen)
        seen.add(show(p.tree))
        value = score(p.tree)
        strategy.observe(i, p.tree, (0, value))
        out.append((show(p.tree), value))
    return out


def test_bo_proposes_the_same_for_a_seed_and_otherwise_for_another():
    runs = [drive(BayesianOptimisation(SAMPLER, random.Random(s), **SMALL_BO), 10) for s in (1, 1, 2)]
    assert runs[0] == runs[1] and runs[0] != runs[2]


def test_bo_and_the_prefilter_find_what_scores_well_sooner_than_chance():
    steps, seeds = 24, range(3)
    bo = [drive(BayesianOptimisation(SAMPLER, random.Random(s), **SMALL_BO), steps) for s in seeds]
    rs = [drive(RandomSearch(SAMPLER, random.Random(s)), steps) for s in seeds]
    pre = [drive(PrefilteredEvolution(SAMPLER, random.Random(s), 4, 2, children=6), steps) for s in seeds]
    re = [drive(RegularisedEvolution(SAMPLER, random.Random(s), 4, 2), steps) for s in seeds]

    def mean_after(runs, start=4):  # the mean score of what each chose once past its initial samples
        return np.mean([v for run in runs for _, v in run[start:]])

    assert mean_after(bo) > 1.5 * mean_after(rs)
    assert np.mean([max(v for _, v in r) for r in bo]) > np.mean([max(v for _, v in r) for r in rs])
    assert mean_after(pre) > mean_after(re)


# --------------------------------------------------------------------------- in a search: lag, kill, workers, rungs


def _job(index, tree, text, epochs) -> Job:
    return Job(str(index), _job, {"arch": text, "epochs": epochs})


def make(kind: str, path: Path, workers: int, seed: int = 0, rungs: tuple[int, ...] = (1,)) -> Scheduler:
    rng = random.Random(seed)
    strategy = (BayesianOptimisation(SAMPLER, rng, **SMALL_BO) if kind == "bo" else
                PrefilteredEvolution(SAMPLER, rng, 4, 2, children=4))
    return Scheduler(strategy, Journal(path), budget=10, workers=workers, job_for=_job, describe=lambda t: {},
                     base={}, lag=2, rungs=rungs, eta=2)


def strip(path: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("started", "finished", "seconds", "timing", "worker")}
            for r in Journal(path).records()]


@pytest.mark.parametrize("kind", ["bo", "prefilter"])
def test_a_killed_search_resumes_into_the_same_journal_with_any_workers(tmp_path, kind):
    whole = tmp_path / "whole"
    make(kind, whole, workers=2).run(FakeEvaluator(2, duration=lambda a: 1.0 + len(a) % 5))
    full = whole.read_text().splitlines(keepends=True)
    assert sum('"kind": "proposal"' in line for line in full) >= 10
    for cut in (len(full) // 3, 2 * len(full) // 3):
        part = tmp_path / f"cut{cut}"
        part.write_text("".join(full[:cut]))
        s = make(kind, part, workers=1)
        s.replay(Journal(part).records())
        ev = FakeEvaluator(1)
        s.resubmit(ev)
        s.run(ev)
        assert strip(part) == strip(whole)


def test_bo_under_successive_halving_replays_and_ranks_promotions(tmp_path):
    whole = tmp_path / "whole"
    s = make("bo", whole, workers=1, rungs=(1, 2, 4))
    s.run(FakeEvaluator(1))
    records = Journal(whole).records()
    assert any(r.get("origin") == "promotion" for r in records)
    assert max(score[0] for score, _ in s.strategy.scores.values()) >= 1  # a promoted incumbent competes at its rung
    part = tmp_path / "part"
    part.write_text("".join(whole.read_text().splitlines(keepends=True)[:len(records) // 2]))
    s2 = make("bo", part, workers=3, rungs=(1, 2, 4))
    s2.replay(Journal(part).records())
    ev = FakeEvaluator(3)
    s2.resubmit(ev)
    s2.run(ev)
    assert strip(part) == strip(whole)


# --------------------------------------------------------------------------- warm-up and the command line

WARM = dict(TINY, budget=5, population=3, tournament=2, lag=2)


def runs(out: Path) -> list[dict]:
    """A search folder's journal without timing and session lines (which processes ran it)."""
    return [r for r in strip(out / "journal.jsonl") if r["kind"] != "session"]


def test_warmup_seeds_the_population_with_the_best_by_proxy_and_resumes_without_scoring(tmp_path, monkeypatch):
    run_search(SearchConfig(strategy="re", warmup="params:6", **WARM), tmp_path / "a", evaluator=FakeEvaluator(2))
    records = Journal(tmp_path / "a" / "journal.jsonl").records()
    warm = next(r for r in records if r["kind"] == "warmup")
    assert warm["proxy"] == "params" and warm["sampled"] == 6 and len(warm["chosen"]) == 3
    assert warm["values"] == sorted(warm["values"], reverse=True)
    first = [r for r in records if r["kind"] == "proposal"][:3]
    assert [r["arch"] for r in first] == warm["chosen"] and {r["origin"] for r in first} == {"seed"}
    run_search(SearchConfig(strategy="re", warmup="params:6", **dict(WARM, workers=1)), tmp_path / "b",
               evaluator=FakeEvaluator(1))
    assert runs(tmp_path / "a") == runs(tmp_path / "b")

    import einc.proxies

    monkeypatch.setattr(einc.proxies, "score", lambda *a, **k: pytest.fail("a resume scored the warm-up again"))
    lines = (tmp_path / "a" / "journal.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "config.json").write_text((tmp_path / "a" / "config.json").read_text())
    (tmp_path / "c" / "journal.jsonl").write_text("".join(lines[:len(lines) // 2]))
    run_search(SearchConfig(), tmp_path / "c", resume=True, evaluator=FakeEvaluator(2))
    assert runs(tmp_path / "c") == runs(tmp_path / "a")


def test_the_prefilter_with_its_proxy_writes_one_journal_whatever_the_workers(tmp_path):
    settings = dict(TINY, budget=7, population=3, tournament=2, lag=2, prefilter=3)
    for n in (1, 2):
        run_search(SearchConfig(**dict(settings, workers=n)), tmp_path / str(n),
                   evaluator=FakeEvaluator(n, duration=lambda a: 1.0 + len(a) % 3))
    assert runs(tmp_path / "1") == runs(tmp_path / "2")
    assert sum(r["origin"] == "mutation" for r in runs(tmp_path / "1") if r["kind"] == "proposal") >= 4


def test_bad_settings_are_refused_in_one_line():
    for given_, message in [(dict(warmup="synflow"), "expected PROXY:K"), (dict(warmup="magic:4"), "unknown proxy"),
                              (dict(warmup="params:4", strategy="rs"), "strategy re or bo"),
                              (dict(prefilter=4, strategy="bo"), "evolution"), (dict(prefilter=0), "children")]:
        with pytest.raises(SearchError, match=message):
            SearchConfig(**given_)


class _Fake(FakeEvaluator):
    """The fake evaluator in place of the local worker processes that the command line starts."""

    def __init__(self, workers: int = 1, **kwargs):
        super().__init__(workers)

    def start(self) -> None:
        pass


@pytest.mark.parametrize("flags", [["--strategy", "bo"], ["--prefilter", "3"], ["--warmup", "synflow:4"],
                                   ["--strategy", "bo", "--warmup", "params:4"]])
def test_each_option_runs_a_search_from_the_command_line(tmp_path, monkeypatch, flags):
    monkeypatch.setattr(workers, "LocalEvaluator", _Fake)
    args = ["search", "--data", "digits10", "--budget", "12", "--population", "3", "--tournament", "2",
            "--max-params", "100000", "--max-flops", "5000000", "--max-activations", "200000", "--lag", "1",
            "--seed", "3", "--out", str(tmp_path / "o"), *flags]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    records = Journal(tmp_path / "o" / "journal.jsonl").records()
    assert sum(r["kind"] == "eval" and "duplicate_of" not in r for r in records) == 12
    assert any(r["kind"] == "warmup" for r in records) == any("--warmup" in f for f in flags)
    r = CliRunner().invoke(main, [*args[:-len(flags)], "--warmup", "magic:3"])
    assert r.exit_code != 0 and "unknown proxy" in r.output and "Traceback" not in r.output
