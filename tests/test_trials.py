"""Every evaluation as one flat row: runtime/trials.py, ``einc trials``, ``SearchResult.rows`` and ``Study.rows``.

No training: objectives run in this process, a Study told by hand, hand-written records.
"""

from __future__ import annotations

import csv
import io
import json

from click.testing import CliRunner

import einc
from einc.cli import main
from einc.runtime.goal import ACCURACY, Goal
from einc.runtime.journal import Journal
from einc.runtime.search import SearchConfig
from einc.runtime.trials import HEAD, folder_records, row, rows, to_csv
from einc.runtime.workers import InlineEvaluator

OK = {"index": 1, "kind": "eval", "arch": "relu", "origin": "mutation", "parent": 0, "status": "ok", "reason": None,
      "metrics": {"val_acc": 0.5, "train_loss": 1.25, "epochs": 3, "params": 7, "curve": [1, 2]},
      "params": 10, "flops": 20, "activations": 30, "seconds": 2.5, "timing": {"build": 0.5, "train": 2.0},
      "started": 100.0, "finished": 102.5, "worker": "1"}
FAILED = {"index": 0, "kind": "eval", "arch": "norm", "origin": "seed", "parent": None, "status": "failed",
          "reason": "TrainError: NaN", "metrics": {}, "params": 4, "flops": 8, "seconds": 1.0, "started": 99.0,
          "finished": 100.0, "worker": "0"}


def test_a_record_becomes_one_flat_row_named_by_the_metric():
    r = row(OK)
    assert r["val_acc"] == 0.5 and r["train_loss"] == 1.25 and r["epochs"] == 3
    assert r["metric_params"] == 7 and r["params"] == 10  # a metric named like a column keeps both
    assert r["curve"] == "[1, 2]"  # not a scalar: its JSON text
    assert (r["time_build"], r["time_train"], r["started"], r["seconds"], r["worker"]) == (0.5, 2.0, 100.0, 2.5, "1")
    assert all(not isinstance(v, (dict, list)) for v in r.values())
    failed = row(FAILED, epochs=8)
    assert failed["val_acc"] is None and failed["reason"] == "TrainError: NaN" and failed["epochs"] == 8
    minimised = row({**OK, "metrics": {"val_rel_l2": 0.25}}, Goal("val_rel_l2", True))
    assert minimised["val_rel_l2"] == 0.25 and "val_acc" not in minimised


def test_rows_share_their_columns_in_index_order_and_ignore_other_records():
    records = [{"kind": "session", "started": 1.0}, {"kind": "proposal", "index": 0, "arch": "norm"}, OK, FAILED,
               {"kind": "final", "metrics": {"test_acc": 0.4}}]
    table = rows(records, ACCURACY, epochs=8)
    assert [r["index"] for r in table] == [0, 1]
    assert list(table[0]) == list(table[1])
    cols = list(table[0])
    assert tuple(cols[:len(HEAD)]) == HEAD and cols[len(HEAD)] == "val_acc"
    assert cols.index("train_loss") < cols.index("params") < cols.index("time_build")
    assert table[0]["time_train"] is None and table[1]["time_train"] == 2.0
    parsed = list(csv.DictReader(io.StringIO(to_csv(table))))
    assert len(parsed) == 2 and list(parsed[0]) == cols and parsed[1]["val_acc"] == "0.5" and parsed[0]["val_acc"] == ""


def test_pending_results_count_as_evaluations_of_a_running_search(tmp_path):
    Journal(tmp_path / "journal.jsonl").append(FAILED)
    pending = Journal(tmp_path / "journal.jsonl.pending")
    pending.append(OK)
    pending.append({**FAILED, "reason": "stale copy"})  # already journaled: the journal's line wins
    got = folder_records(tmp_path)
    assert [r["index"] for r in got] == [0, 1] and got[0]["reason"] == "TrainError: NaN"


def fails_sometimes(arch, ctx):
    if len(arch.text) % 3 == 0:
        raise ValueError("not this one")
    return -arch.infer(ctx.input_shape).params


def test_einc_trials_prints_one_row_per_evaluation_as_csv_json_and_text(tmp_path):
    einc.search(fails_sometimes, input_shape=(3, 8, 8), strategy="re", population=3, tournament=2, budget=8,
                out=tmp_path, max_params=100_000, evaluator=InlineEvaluator())
    evals = [r for r in Journal(tmp_path / "journal.jsonl").records() if r["kind"] == "eval"]
    runner = CliRunner()
    r = runner.invoke(main, ["trials", str(tmp_path), "--csv"])
    assert r.exit_code == 0, r.output
    parsed = list(csv.DictReader(io.StringIO(r.output)))
    assert [int(p["index"]) for p in parsed] == [e["index"] for e in evals] and len(evals) >= 8
    assert [p["arch"] for p in parsed] == [e["arch"] for e in evals]
    assert [p["status"] for p in parsed] == [e["status"] for e in evals] and "failed" in {e["status"] for e in evals}
    assert {p["score"] for p in parsed if p["status"] == "failed"} == {""}
    assert {p["reason"] for p in parsed if p["status"] == "failed"} == {"ValueError: not this one"}
    j = runner.invoke(main, ["trials", str(tmp_path), "--json"])
    assert json.loads(j.output) == rows(evals, Goal("score"), SearchConfig.load(tmp_path / "config.json").epochs)
    text = runner.invoke(main, ["trials", str(tmp_path)])
    lines = text.output.splitlines()
    assert text.exit_code == 0
    assert lines[0].split()[:6] == ["index", "origin", "parent", "duplicate_of", "status", "score"]
    assert len(lines) == 1 + len(evals)
    bad = runner.invoke(main, ["trials", str(tmp_path / "trials")])  # a folder that is no search's
    assert bad.exit_code != 0 and "Traceback" not in bad.output


def test_a_search_result_and_a_study_give_the_rows_einc_trials_prints(tmp_path):
    def objective(arch, ctx):
        return {"score": -arch.infer(ctx.input_shape).params, "depth": len(arch.text)}

    result = einc.search(objective, input_shape=(3, 8, 8), strategy="rs", budget=3, workers=1, out=tmp_path / "s",
                         max_params=100_000, evaluator=InlineEvaluator())
    printed = CliRunner().invoke(main, ["trials", str(tmp_path / "s"), "--json"])
    assert printed.exit_code == 0, printed.output
    assert result.rows == json.loads(printed.output) and len(result.rows) == 3
    assert [r["score"] for r in result.rows] == [t.score for t in result.trials]

    study = einc.Study(input_shape=(3, 8, 8), strategy="rs", out=tmp_path / "t", max_params=100_000)
    for k in range(3):
        trial = study.ask()
        study.tell(trial, ValueError("no") if k == 1 else {"score": float(k), "depth": k})
    printed = CliRunner().invoke(main, ["trials", str(tmp_path / "t"), "--json"])
    assert study.rows == json.loads(printed.output)
    assert [(r["status"], r["score"], r["depth"]) for r in study.rows] == [("ok", 0.0, 0), ("failed", None, None),
                                                                          ("ok", 2.0, 2)]
