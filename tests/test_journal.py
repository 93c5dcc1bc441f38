"""The journal is plain JSON lines, fsync'd per append, and never silently loses a byte."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from einc.runtime.journal import Journal, JournalError, JournalWarning

RECORD = {"index": 0, "arch": "sequential(linear(64), relu)", "grammar_hash": "ab12", "seed": 0,
          "status": "ok", "reason": None, "metrics": {"val_acc": 0.5, "train_loss": 1.2, "epochs": 8},
          "params": 1234, "flops": 5678, "seconds": 3.5, "strategy": "random", "parent": None}


def test_append_then_read_back_plain_json_lines(tmp_path):
    path = tmp_path / "runs" / "journal.jsonl"  # the folder is created on first append
    j = Journal(path)
    assert j.records() == [] and not path.exists()
    j.append(RECORD)
    j.append({**RECORD, "index": 1, "metrics": {"val_acc": np.float32(0.25)}, "params": np.int64(7)})
    second = {**RECORD, "index": 1, "metrics": {"val_acc": 0.25}, "params": 7}
    assert Journal(path).records() == [RECORD, second]
    lines = path.read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[0]) == RECORD  # readable without einc
    assert len(Journal(path)) == 2


def test_append_fsyncs_before_returning(tmp_path, monkeypatch):
    synced = []
    monkeypatch.setattr(os, "fsync", synced.append)
    j = Journal(tmp_path / "j.jsonl")
    j.append(RECORD)
    j.append(RECORD)
    assert len(synced) == 2


def test_records_that_are_not_plain_json_are_refused(tmp_path):
    j = Journal(tmp_path / "j.jsonl")
    with pytest.raises(JournalError, match="not plain JSON"):
        j.append({"metrics": {"val_acc": float("nan")}})
    with pytest.raises(JournalError, match="not plain JSON"):
        j.append({"model": object()})
    assert j.records() == []


def test_truncated_last_line_is_tolerated_then_moved_aside(tmp_path):
    path = tmp_path / "j.jsonl"
    j = Journal(path)
    j.append(RECORD)
    fragment = json.dumps({**RECORD, "index": 1})[:25]
    with open(path, "a") as f:
        f.write(fragment)  # a crash mid-write
    with pytest.warns(JournalWarning, match=r"j\.jsonl:2: warning: ignoring a truncated last line"):
        assert Journal(path).records() == [RECORD]
    assert path.read_text().endswith(fragment)  # reading changes nothing

    j2 = Journal(path)
    with pytest.warns(JournalWarning, match=r"moved a truncated last line"):
        j2.append({**RECORD, "index": 2})
    assert (tmp_path / "j.jsonl.damaged").read_text() == fragment + "\n"  # preserved, not dropped
    assert [r["index"] for r in j2.records()] == [0, 2]
    assert path.read_text().count("\n") == 2


def test_a_whole_last_record_missing_only_its_newline_is_kept(tmp_path):
    path = tmp_path / "j.jsonl"
    path.write_text(json.dumps(RECORD) + "\n" + json.dumps({**RECORD, "index": 1}))
    j = Journal(path)
    assert [r["index"] for r in j.records()] == [0, 1]
    j.append({**RECORD, "index": 2})
    assert [r["index"] for r in j.records()] == [0, 1, 2]
    assert not (tmp_path / "j.jsonl.damaged").exists()


def test_corrupt_middle_line_is_an_error_with_its_line_number(tmp_path):
    path = tmp_path / "j.jsonl"
    path.write_text(json.dumps(RECORD) + "\n{broken\n" + json.dumps(RECORD) + "\n")
    with pytest.raises(JournalError, match=r"j\.jsonl:2: error: corrupt journal line") as err:
        Journal(path).records()
    assert "\n" not in str(err.value)
    path.write_text(json.dumps(RECORD) + "\n[1, 2]\n")
    with pytest.raises(JournalError, match=r"j\.jsonl:2: error: a journal line must be a JSON object"):
        Journal(path).records()
