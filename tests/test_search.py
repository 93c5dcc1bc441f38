"""Searches on the embedded digits task: outputs, kill-and-resume, repeats, bad input.

Logic runs on the fake evaluator of conftest.py; one search trains for real (outputs end to end).
Searches in real processes (SIGKILL, Ctrl-C) are tests/test_search_processes.py's.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest
from click.testing import CliRunner

from einc.cli import main
from einc.errors import EinError
from einc.runtime.journal import Journal
from einc.runtime.search import SearchConfig, SearchError, run_search

from conftest import TINY, FakeEvaluator, evals

ROOT = Path(__file__).resolve().parents[1]

def test_random_search_end_to_end_leaves_every_output(tmp_path):
    summary = run_search(SearchConfig(strategy="rs", **TINY), tmp_path)
    for name in ("journal.jsonl", "plot.png", "best.arch", "best.py", "best.svg", "summary.json", "summary.txt",
                 "config.json"):
        assert (tmp_path / name).stat().st_size > 0, name
    records = Journal(tmp_path / "journal.jsonl").records()
    assert [r["kind"] for r in records[:2]] == ["session", "proposal"]
    trained = evals(tmp_path)
    assert [r["index"] for r in trained] == list(range(6)) and "duplicate_of" not in str(trained)
    assert records[-1]["kind"] == "final" and 0 <= records[-1]["metrics"]["test_acc"] <= 1
    assert summary["best_val_acc"] == max(r["metrics"]["val_acc"] for r in trained if r["status"] == "ok")
    assert (tmp_path / "best.arch").read_text().strip() in {r["arch"] for r in trained}
    src = (tmp_path / "best.py").read_text()
    assert "class Net(nn.Module)" in src and "import torch" in src and "grammar: einspace" in src
    assert src.count("# architecture:") == 1
    for r in trained:
        assert {"arch", "grammar_hash", "seed", "status", "metrics", "params", "flops", "seconds", "started",
                "finished", "worker"} <= set(r)
        assert r["started"] <= r["finished"] and r["worker"] == "0"
    assert summary["evaluations_per_minute"] > 0 and 0 < summary["busy"] <= 1
    assert summary["pareto"] and all(p["index"] in {r["index"] for r in trained} for p in summary["pareto"])


def test_the_readme_setting_trains_as_many_distinct_networks_as_the_budget(tmp_path):
    seed = (ROOT / "examples" / "resnet_small.arch").read_text()
    cfg = SearchConfig(data="digits", strategy="re", seeds=(seed,), seed_names=("resnet_small",), budget=16,
                       population=8, tournament=3, max_flops=30_000_000, max_activations=300_000, seed=2,
                       workers=2)
    summary = run_search(cfg, tmp_path, evaluator=FakeEvaluator(2))
    trained = [r for r in evals(tmp_path) if "duplicate_of" not in r]
    assert summary["trained"] == len(trained) == len({r["arch"] for r in trained}) == 16
    assert summary["reused_duplicates"] == 7  # the seed's other copies in the population of 8
    assert summary["seed_val_acc"]["resnet_small"] == trained[0]["metrics"]["val_acc"]
    assert all(r["origin"] == "mutation" for r in trained[1:])


@pytest.mark.parametrize("strategy", ["re", "rs", "sample"])
def test_a_space_of_one_architecture_ends_at_once_and_says_so(tmp_path, strategy):
    grammar = tmp_path / "one.ein"
    grammar.write_text("start S(shape=(1, 8, 8))\nS -> sequential: Conv Conv\n"
                       "Conv -> im2col(k=3, s=1, p=1) linear(d=16) col2im\n")
    cfg = SearchConfig(grammar=str(grammar), data="digits10", strategy=strategy, budget=2, population=4, workers=2)
    summary = run_search(cfg, tmp_path / "o", evaluator=FakeEvaluator(2))
    records = Journal(tmp_path / "o" / "journal.jsonl").records()
    assert summary["trained"] == 1 and len(records) < 50  # not hundreds of repeated lines
    assert any("1 distinct architecture found" in n and "exhausted" in n for n in summary["notes"])


def test_a_search_whose_every_evaluation_fails_says_so_and_claims_no_files(tmp_path):
    summary = run_search(SearchConfig(strategy="rs", **TINY), tmp_path, evaluator=FakeEvaluator(fails=lambda a: True))
    assert summary["best_index"] is None and summary["failures"] == ["TrainError"]
    assert not (tmp_path / "best.arch").exists() and not (tmp_path / "best.py").exists()
    assert "best.py" not in summary["files"] and (tmp_path / "summary.json").exists()
    r = CliRunner().invoke(main, ["search", "--data", "digits10", "--strategy", "rs", "--budget", "2",
                                  "--epochs", "1", "--time-limit", "0.01", "--max-params", "50000",
                                  "--out", str(tmp_path / "cli")])
    assert r.exit_code == 1 and "every evaluation failed" in r.output and "Timeout" in r.output
    assert "best.py" not in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(main, ["search", "--out", str(tmp_path / "cli"), "--resume"])
    assert r.exit_code == 1 and "None evaluations/minute" not in r.output


def test_resume_refuses_a_journal_from_another_search(tmp_path):
    run_search(SearchConfig(strategy="rs", **TINY), tmp_path, evaluator=FakeEvaluator())
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["seed"] = 99
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(SearchError, match="belongs to another search"):
        run_search(SearchConfig(), tmp_path, resume=True, evaluator=FakeEvaluator())


def test_a_new_search_will_not_overwrite_a_journal(tmp_path):
    run_search(SearchConfig(strategy="sample", **dict(TINY, budget=2)), tmp_path, evaluator=FakeEvaluator())
    before = (tmp_path / "journal.jsonl").read_bytes()
    with pytest.raises(SearchError, match="already recorded here"):
        run_search(SearchConfig(strategy="sample", **dict(TINY, budget=2)), tmp_path, evaluator=FakeEvaluator())
    assert (tmp_path / "journal.jsonl").read_bytes() == before


def test_cli_reports_bad_input_in_one_line(tmp_path):
    runner = CliRunner()
    r = runner.invoke(main, ["search", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert r.exit_code == 1 and "no such file or folder" in r.output and "Traceback" not in r.output
    r = runner.invoke(main, ["search", "--strategy", "xx"])
    assert r.exit_code == 2
    (tmp_path / "o2").mkdir()
    (tmp_path / "o2" / "journal.jsonl").write_text('{"kind": "session", "started": 0}\nnot json\n{"index": 1}\n')
    (tmp_path / "o2" / "config.json").write_text(json.dumps(asdict(SearchConfig(**TINY))))
    r = runner.invoke(main, ["search", "--out", str(tmp_path / "o2"), "--resume"])
    assert r.exit_code == 1 and "journal.jsonl:2" in r.output and "Traceback" not in r.output
    bad_seed = tmp_path / "bad.arch"
    bad_seed.write_text("sequential(relu, foo)")
    r = runner.invoke(main, ["search", "--seeds", str(bad_seed), "--out", str(tmp_path / "o3")])
    assert r.exit_code == 1 and "bad: error: not a valid seed" in r.output


def test_more_workers_than_population_still_evolves(tmp_path):
    cfg = SearchConfig(strategy="re", population=1, tournament=1, workers=2, **dict(TINY, budget=4))
    run_search(cfg, tmp_path, evaluator=FakeEvaluator(2))
    records = evals(tmp_path)
    assert [r["origin"] for r in records] == ["sample", "mutation", "mutation", "mutation"]


def test_report_rewrites_summary_and_plot_from_the_journal(tmp_path):
    run_search(SearchConfig(strategy="rs", **TINY), tmp_path, evaluator=FakeEvaluator(2))
    (tmp_path / "plot.png").unlink()
    (tmp_path / "summary.json").unlink()
    r = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert r.exit_code == 0 and "best found" in r.output
    assert (tmp_path / "plot.png").stat().st_size > 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    front = summary["pareto"]
    assert front and [p["params"] for p in front] == sorted(p["params"] for p in front)
    assert [p["val_acc"] for p in front] == sorted(p["val_acc"] for p in front)  # more params must buy accuracy
    r = CliRunner().invoke(main, ["report", str(tmp_path / "nope")])
    assert r.exit_code == 2 and "Traceback" not in r.output


def test_unreadable_seed_file_is_one_line(tmp_path):
    seed = tmp_path / "seed.arch"
    seed.write_bytes(b"\xff\xfe\x00bad")
    r = CliRunner().invoke(main, ["search", "--seeds", str(seed), "--out", str(tmp_path / "o")])
    assert r.exit_code == 1 and "cannot read the seed" in r.output and "Traceback" not in r.output


def test_seeds_by_name_and_mix(tmp_path, monkeypatch):
    seen = {}

    def fake_run(config, out, **kw):
        seen["config"] = config
        raise SearchError("stop here")

    monkeypatch.setattr("einc.runtime.study.run_search", fake_run)
    r = CliRunner().invoke(main, ["search", "--seeds", "mix", "--out", str(tmp_path / "o")])
    assert r.exit_code == 1 and "stop here" in r.output
    assert seen["config"].seed_names == ("resnet18", "wrn16_4_published", "vit", "mixer_published")
    assert all(text.startswith(("sequential", "routing", "branching")) for text in seen["config"].seeds)
    r = CliRunner().invoke(main, ["search", "--seeds", "resnet19", "--out", str(tmp_path / "o")])
    assert r.exit_code == 1 and "no bundled seed of that name" in r.output and "resnet18" in r.output


def test_a_grammar_in_another_mode_than_the_data_is_named_before_any_training(tmp_path):
    grammar = tmp_path / "col.ein"
    grammar.write_text("start S(shape=(16, 8))\nS -> M\nM -> sequential: M M @ 0.3 | C\nC -> linear(d=16) | relu\n")
    ev = FakeEvaluator()
    with pytest.raises(EinError, match="starts in mode Col; the input 2,8,8 is Im"):
        run_search(SearchConfig(grammar=str(grammar), data="digits", budget=2), tmp_path / "o", evaluator=ev)
    assert ev.submitted == []


def test_workers_share_the_cores_and_omp_num_threads_caps_them(monkeypatch):
    from einc.runtime.search import threads_per_worker

    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert [threads_per_worker(w) for w in (1, 2, 3, 16)] == [8, 4, 2, 1]
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert [threads_per_worker(w) for w in (1, 2, 4)] == [3, 3, 2]
    monkeypatch.setenv("OMP_NUM_THREADS", "lots")  # not a count: ignored, as torch ignores it
    assert threads_per_worker(2) == 4


def test_a_second_search_in_the_same_folder_is_refused_while_the_first_runs(tmp_path):
    import fcntl

    run_search(SearchConfig(**dict(TINY, budget=2)), tmp_path / "o", evaluator=FakeEvaluator(1))
    with open(tmp_path / "o" / ".lock", "a") as held:  # as the running search holds it
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        before = (tmp_path / "o" / "journal.jsonl").read_bytes()
        r = CliRunner().invoke(main, ["search", "--out", str(tmp_path / "o"), "--resume"])
        assert r.exit_code == 1 and "another einc search is running in this folder" in r.output
        assert "Traceback" not in r.output and (tmp_path / "o" / "journal.jsonl").read_bytes() == before
    summary = run_search(SearchConfig(**dict(TINY, budget=2)), tmp_path / "o", resume=True,
                         evaluator=FakeEvaluator(1))  # released: the resume goes ahead
    assert summary["trained"] == 2
