"""End-to-end searches on the embedded digits task: outputs, kill-and-resume, duplicates, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import pytest
from click.testing import CliRunner

from einc.cli import main
from einc.runtime.journal import Journal, JournalWarning
from einc.runtime.search import SearchConfig, SearchError, run_search

# Small networks, one epoch, the 10-class digits: a few seconds per search.
TINY = dict(data="digits10", budget=6, epochs=1, batch_size=64, max_params=100_000, max_flops=5_000_000,
            max_activations=200_000, seed=3)


def evals(out: Path) -> list[dict]:
    return [r for r in Journal(out / "journal.jsonl").records() if r["kind"] == "eval"]


def same_results(a: list[dict], b: list[dict]) -> None:
    assert [r["index"] for r in a] == [r["index"] for r in b] == list(range(len(a)))
    for x, y in zip(a, b):
        assert (x["arch"], x["status"], x.get("duplicate_of")) == (y["arch"], y["status"], y.get("duplicate_of"))
        for k in ("val_acc", "train_loss"):
            if k in x["metrics"]:
                assert x["metrics"][k] == pytest.approx(y["metrics"][k], abs=1e-6)


def test_random_search_end_to_end_leaves_every_output(tmp_path):
    summary = run_search(SearchConfig(strategy="rs", **TINY), tmp_path)
    for name in ("journal.jsonl", "plot.png", "best.arch", "best.py", "summary.json", "summary.txt", "config.json"):
        assert (tmp_path / name).stat().st_size > 0, name
    records = Journal(tmp_path / "journal.jsonl").records()
    assert [r["index"] for r in records] == list(range(7))  # 6 evaluations, then the final retrain
    assert records[-1]["kind"] == "final" and 0 <= records[-1]["metrics"]["test_acc"] <= 1
    assert summary["best_val_acc"] == max(r["metrics"]["val_acc"] for r in records[:-1] if r["status"] == "ok")
    assert (tmp_path / "best.arch").read_text().strip() in {r["arch"] for r in records}
    src = (tmp_path / "best.py").read_text()
    assert "class Net(nn.Module)" in src and "import torch" in src
    for r in records[:-1]:
        assert {"arch", "grammar_hash", "seed", "status", "metrics", "params", "flops", "seconds"} <= set(r)


def test_seeded_evolution_trains_the_seed_once(tmp_path):
    seed = "sequential(routing(im2col(k=3, s=1, p=1), linear(d=16), col2im), norm, relu)"
    cfg = SearchConfig(strategy="re", seeds=(seed,), seed_names=("tiny",), population=3, tournament=2,
                       **TINY)
    summary = run_search(cfg, tmp_path)
    records = evals(tmp_path)
    assert [r["origin"] for r in records] == ["seed"] * 3 + ["mutation"] * 3
    assert records[1]["duplicate_of"] == records[2]["duplicate_of"] == 0  # copies are not retrained
    assert summary["seed_val_acc"]["tiny"] == records[0]["metrics"]["val_acc"]
    assert all(r["parent"] in (0, 1, 2, 3, 4) for r in records[3:])


def _child_run(out: Path, cfg: SearchConfig) -> subprocess.Popen:
    code = ("import sys, json; from einc.runtime.search import SearchConfig, run_search; "
            "run_search(SearchConfig(**json.loads(sys.argv[1])), sys.argv[2])")
    return subprocess.Popen([sys.executable, "-c", code, json.dumps(asdict(cfg)), str(out)],
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_sigkill_then_resume_gives_the_uninterrupted_journal(tmp_path):
    cfg = SearchConfig(strategy="re", population=3, tournament=2, **TINY)
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    run_search(cfg, ref)

    child = _child_run(killed, cfg)
    journal = killed / "journal.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not journal.exists() or journal.read_text().count("\n") < 3):
        time.sleep(0.05)
    os.killpg(child.pid, signal.SIGKILL)  # the search and its workers, mid-run
    child.wait()
    done = journal.read_text().count("\n")
    assert 3 <= done < 7
    with open(journal, "ab") as f:  # and a crash in the middle of writing a line
        f.write(b'{"index": 5, "kind": "ev')

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_search(cfg, killed, resume=True)
    assert any(issubclass(w.category, JournalWarning) for w in caught)
    assert b'{"index": 5, "kind": "ev' in (killed / "journal.jsonl.damaged").read_bytes()
    same_results(evals(ref), evals(killed))
    assert len(Journal(journal).records()) == 7  # nothing lost, nothing repeated


def test_resume_refuses_a_journal_from_another_search(tmp_path):
    run_search(SearchConfig(strategy="rs", **TINY), tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["seed"] = 99
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(SearchError, match="belongs to another search"):
        run_search(SearchConfig(), tmp_path, resume=True)


def test_a_new_search_will_not_overwrite_a_journal(tmp_path):
    run_search(SearchConfig(strategy="sample", **dict(TINY, budget=2)), tmp_path)
    before = (tmp_path / "journal.jsonl").read_bytes()
    with pytest.raises(SearchError, match="already recorded here"):
        run_search(SearchConfig(strategy="sample", **dict(TINY, budget=2)), tmp_path)
    assert (tmp_path / "journal.jsonl").read_bytes() == before


def test_cli_reports_bad_input_in_one_line(tmp_path):
    runner = CliRunner()
    r = runner.invoke(main, ["search", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert r.exit_code == 1 and "no such file or folder" in r.output and "Traceback" not in r.output
    r = runner.invoke(main, ["search", "--strategy", "xx"])
    assert r.exit_code == 2
    (tmp_path / "o2").mkdir()
    (tmp_path / "o2" / "journal.jsonl").write_text('{"index": 0}\nnot json\n{"index": 1}\n')
    (tmp_path / "o2" / "config.json").write_text(json.dumps(asdict(SearchConfig(**TINY))))
    r = runner.invoke(main, ["search", "--out", str(tmp_path / "o2"), "--resume"])
    assert r.exit_code == 1 and "journal.jsonl:2" in r.output and "Traceback" not in r.output
    bad_seed = tmp_path / "bad.arch"
    bad_seed.write_text("sequential(relu, foo)")
    r = runner.invoke(main, ["search", "--seeds", str(bad_seed), "--out", str(tmp_path / "o3")])
    assert r.exit_code == 1 and "bad: error: not a valid seed" in r.output


def test_more_workers_than_population_still_evolves(tmp_path):
    cfg = SearchConfig(strategy="re", population=1, tournament=1, workers=2, **dict(TINY, budget=4))
    run_search(cfg, tmp_path)
    records = evals(tmp_path)
    assert [r["origin"] for r in records] == ["sample", "mutation", "mutation", "mutation"]


def test_unreadable_seed_file_is_one_line(tmp_path):
    seed = tmp_path / "seed.arch"
    seed.write_bytes(b"\xff\xfe\x00bad")
    r = CliRunner().invoke(main, ["search", "--seeds", str(seed), "--out", str(tmp_path / "o")])
    assert r.exit_code == 1 and "cannot read the seed" in r.output and "Traceback" not in r.output
