"""The journal is plain JSON lines, fsync'd per append, and never silently loses a byte."""

from __future__ import annotations

import json
import os
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from einc.cli import main
from einc.runtime.journal import Journal, JournalError, JournalWarning
from einc.runtime.search import SearchConfig, run_search

from conftest import TINY, FakeEvaluator

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


def _lines(*records: dict | bytes) -> bytes:
    return b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in records)


def _refused(path: Path, line: int) -> str:
    """The error of reading ``path``, checked: it names ``line``, is one line, and changed no byte."""
    before = path.read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an error, not a warning then an error
        with pytest.raises(JournalError) as err:
            Journal(path).records()
    message = str(err.value)
    assert message.startswith(f"{path}:{line}: error: "), message
    assert "\n" not in message and len(message) < 400, message
    assert path.read_bytes() == before and not path.with_name(path.name + ".damaged").exists()
    return message


GOOD = [RECORD, {**RECORD, "index": 1}, {**RECORD, "index": 2}]
WHOLE = json.dumps({**RECORD, "index": 1}).encode()


@pytest.mark.parametrize("damaged,needle", [
    (WHOLE[:40], "is not JSON (Unterminated string starting at column 22; a write cut short?)"),  # (a)
    (WHOLE[:40] + WHOLE, "holds a record cut short, then a whole one from column 41"),  # (b), newline lost
    (WHOLE + WHOLE, "holds more after a whole record (from column"),  # (b), both whole
    (b"\0" * 4096, "holds 4096 NUL bytes from column 1 (what a crash or a power cut leaves"),  # (c)
    (b"\0" * 100 + WHOLE, "holds 100 NUL bytes from column 1, then a whole one from column 101"),  # (c)
    (WHOLE[:30] + b"\xff\xfe" + WHOLE[30:], "is not UTF-8 (byte 0xFF at column 31)"),  # (d)
    (b'{"index": 1, "metrics": {"val_acc": NaN}}', "is not plain JSON (it holds NaN)"),
    (b"[1, 2]", "a journal line must be a JSON object, not list"),
    (b"{broken", "is not JSON (Expecting property name enclosed in double quotes at column 2"),
])
def test_a_damaged_middle_line_is_a_located_error_and_changes_nothing(tmp_path, damaged, needle):
    path = tmp_path / "j.jsonl"
    path.write_bytes(_lines(GOOD[0], damaged, GOOD[2], GOOD[1]))
    message = _refused(path, 2)
    assert f": error: the line {needle}" in message or f": error: {needle}" in message, message
    # what to do: a prefix of the journal always resumes, one middle line taken out may not
    assert message.endswith("; repair the line, or move it and the 2 lines after it by hand to j.jsonl.damaged "
                            "(a resumed search redoes what they held)"), message


@pytest.mark.parametrize("record,needle", [
    ({"kind": "eval"}, 'eval record lacks "index"'),
    ({k: v for k, v in RECORD.items() if k != "arch"}, 'eval record 0 lacks "arch"'),
    ({**RECORD, "status": None}, 'eval record 0: "status" must be "ok" or "failed", not null'),
    ({**RECORD, "index": "x"}, 'eval record: "index" must be an integer >= 0, not "x"'),
    ({**RECORD, "index": -1}, '"index" must be an integer >= 0, not -1'),
    ({**RECORD, "index": 1.0}, '"index" must be an integer >= 0, not 1.0'),
    ({**RECORD, "index": True}, '"index" must be an integer >= 0, not true'),
    ({**RECORD, "arch": 5}, 'eval record 0: "arch" must be a string, not 5'),
    ({**RECORD, "metrics": [0.5]}, '"metrics" must be an object whose val_acc and test_acc are numbers, not [0.5]'),
    ({**RECORD, "metrics": {"val_acc": "0.5"}}, '"metrics" must be an object whose val_acc and test_acc are numbers'),
    ({**RECORD, "params": "12"}, '"params" must be an integer >= 0 or null, not "12"'),
    ({**RECORD, "timing": {"train": None}}, '"timing" must be an object of numbers, not {"train": null}'),
    ({"index": 0, "kind": "proposal"}, 'proposal record 0 lacks "arch"'),
    ({"kind": "session", "started": "now"}, 'session record: "started" must be a number, not "now"'),
    ({"kind": "session", "started": 1.0, "workers": 0}, '"workers" must be an integer >= 1, not 0'),
    ({"kind": "final", "index": 3, "metrics": None}, 'final record 3: "metrics" must be an object'),
    ({**RECORD, "kind": "evl"}, 'unknown record kind "evl" (einc writes proposal, eval, session, final, warmup)'),
    ({**RECORD, "kind": ["eval"]}, 'unknown record kind ["eval"]'),
    ({**RECORD, "arch": "x" * 100, "index": [1]}, '"index" must be an integer >= 0, not [1]'),
])
def test_a_record_missing_what_the_search_relies_on_is_a_located_error(tmp_path, record, needle):
    """(e): such a record would reach the replay or the report and raise KeyError or TypeError there."""
    path = tmp_path / "j.jsonl"
    path.write_bytes(_lines(*GOOD, record))
    message = _refused(path, 4)
    assert needle in message.split(": error: ", 1)[1], message
    assert "; repair the line, or move it by hand to j.jsonl.damaged (a resumed search redoes what it held)" \
        in message
    with pytest.raises(JournalError, match="refusing to write a record that reading would refuse: .*"
                       + re.escape(needle)):
        Journal(tmp_path / "new.jsonl").append(record)  # the writer keeps to what the reader accepts
    assert not (tmp_path / "new.jsonl").exists()


def test_what_the_schema_leaves_open_stays_open(tmp_path):
    path = tmp_path / "j.jsonl"
    records = [
        {"index": 0, "arch": "relu", "status": "ok", "metrics": {"val_acc": 0.5}},  # no kind: an older einc's eval
        {"index": 1, "kind": "eval", "arch": "relu", "status": "failed", "metrics": {}, "extra": [1, {"a": None}]},
        {"kind": "final", "metrics": {"test_acc": 1}},  # only what the report reads
        {"kind": "session", "started": 1, "ready": 2.5, "workers": 4, "resumed": True, "pid": 7, "new": "key"},
        {**RECORD, "index": 2, "metrics": {"val_acc": None, "note": "text"}, "params": None, "reason": 5},
    ]
    for r in records:
        Journal(path).append(r)
    assert Journal(path).records() == records


def test_the_first_damaged_line_is_the_one_named(tmp_path):
    path = tmp_path / "j.jsonl"
    path.write_bytes(_lines(GOOD[0], b"{broken", GOOD[1], b'{"index": "\xff"}', GOOD[2]))
    assert "is not JSON" in _refused(path, 2)
    path.write_bytes(_lines(GOOD[0], {"kind": "eval"}, GOOD[1], b"\0\0"))
    assert 'lacks "index"' in _refused(path, 2)


@pytest.mark.parametrize("tail", [b"\0" * 4096, b"\0" * 4096 + b"\n", WHOLE[:100] + b"\0" * 200 + b"\n"],
                         ids=["nul", "nul-newline", "cut-then-nul"])
def test_nul_bytes_ending_the_journal_are_a_crash_tail_set_aside_like_a_truncated_line(tmp_path, tail):
    """What a power cut leaves where the last write never reached the disk: tolerated, then moved aside."""
    path = tmp_path / "j.jsonl"
    path.write_bytes(_lines(*GOOD) + tail)
    with pytest.warns(JournalWarning, match=r"j\.jsonl:4: warning: ignoring a damaged last line \(.*NUL"):
        assert Journal(path).records() == GOOD
    assert path.read_bytes() == _lines(*GOOD) + tail  # reading changes nothing
    j = Journal(path)
    with pytest.warns(JournalWarning, match=r"j\.jsonl:4: warning: moved a damaged last line"):
        j.append({**RECORD, "index": 3})
    assert (tmp_path / "j.jsonl.damaged").read_bytes() == tail.rstrip(b"\n") + b"\n"  # kept, byte for byte
    assert [r["index"] for r in j.records()] == [0, 1, 2, 3]


def test_a_last_line_that_still_holds_a_whole_record_is_not_set_aside(tmp_path):
    path = tmp_path / "j.jsonl"
    path.write_bytes(_lines(*GOOD, b"\0" * 10 + WHOLE))
    assert "holds 10 NUL bytes from column 1, then a whole one from column 11" in _refused(path, 4)
    path.write_bytes(_lines(*GOOD, WHOLE + b"\0" * 10))
    assert f"holds 10 NUL bytes from column {len(WHOLE) + 1}" in _refused(path, 4)


# ---------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def search(tmp_path_factory) -> Path:
    """A finished search folder (fake evaluations), copied by each test that damages it."""
    out = tmp_path_factory.mktemp("search")
    run_search(SearchConfig(strategy="rs", **TINY), out, evaluator=FakeEvaluator())
    return out


def _damage(search: Path, tmp_path: Path, line: int, replace: bytes) -> tuple[Path, bytes]:
    out = tmp_path / "run"
    shutil.copytree(search, out)
    lines = (out / "journal.jsonl").read_bytes().splitlines(keepends=True)
    lines[line - 1] = replace + b"\n"
    (out / "journal.jsonl").write_bytes(b"".join(lines))
    return out, b"".join(lines)


def test_report_and_resume_on_a_damaged_middle_line_say_one_line_and_lose_nothing(search, tmp_path, monkeypatch):
    records = Journal(search / "journal.jsonl").records()
    line = next(n for n, r in enumerate(records, 1) if r["kind"] == "eval")  # the first finished evaluation
    glued = json.dumps(records[line - 1]).encode()
    out, damaged = _damage(search, tmp_path, line, glued[:50] + glued)
    journal = out / "journal.jsonl"
    where = f"{journal}:{line}: error: the line holds a record cut short, then a whole one from column 51"

    r = CliRunner().invoke(main, ["report", str(out)])
    assert r.exit_code == 1 and r.stderr.startswith(where) and r.stderr.count("\n") == 1, r.output
    assert "Traceback" not in r.output and journal.read_bytes() == damaged

    real = run_search  # `einc search --resume` on fake evaluations

    def fake(*args, evaluator=None, **kw):
        return real(*args, evaluator=FakeEvaluator(), **kw)

    monkeypatch.setattr("einc.runtime.study.run_search", fake)
    r = CliRunner().invoke(main, ["search", "--out", str(out), "--resume"])
    errors = [s for s in r.stderr.splitlines() if "error" in s]
    assert r.exit_code == 1 and len(errors) == 1 and errors[0].startswith(where), r.output
    assert "Traceback" not in r.output and journal.read_bytes() == damaged
    assert not (out / "journal.jsonl.damaged").exists()

    # the advice holds: the line and the ones after it moved aside, the search resumes and redoes them
    lines = damaged.splitlines(keepends=True)
    (out / "journal.jsonl.damaged").write_bytes(b"".join(lines[line - 1:]))
    journal.write_bytes(b"".join(lines[:line - 1]))
    r = CliRunner().invoke(main, ["search", "--out", str(out), "--resume"])
    assert r.exit_code == 0, r.output
    evals = [r for r in Journal(journal).records() if r["kind"] == "eval"]
    assert [r["index"] for r in evals] == [r["index"] for r in records if r["kind"] == "eval"]


def test_a_wrong_typed_record_is_a_located_error_not_a_traceback(search, tmp_path):
    records = Journal(search / "journal.jsonl").records()
    line = next(n for n, r in enumerate(records, 1) if r["kind"] == "eval")
    out, damaged = _damage(search, tmp_path, line, json.dumps({**records[line - 1], "metrics": [1]}).encode())
    with pytest.raises(JournalError, match=rf"journal\.jsonl:{line}: error: eval record \d+: \"metrics\" must be"):
        run_search(None, out, resume=True, evaluator=FakeEvaluator())
    assert (out / "journal.jsonl").read_bytes() == damaged
    r = CliRunner().invoke(main, ["report", str(out)])
    assert r.exit_code == 1 and f"journal.jsonl:{line}: error:" in r.stderr and "Traceback" not in r.output
    r = CliRunner().invoke(main, ["fit", str(out), "-o", str(tmp_path / "fit.ein")])
    assert r.exit_code == 1 and f"journal.jsonl:{line}: error:" in r.stderr and "Traceback" not in r.output
