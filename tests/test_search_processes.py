"""Searches with real worker processes: SIGKILL and Ctrl-C of the search, CPU fallbacks of GPU flags.

(A file of its own so that pytest-xdist runs these beside the fake-evaluator logic tests.)
"""

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
from einc.runtime.search import SearchConfig, run_search

from conftest import TINY, evals

pytestmark = pytest.mark.slow  # real searches in real processes: scheduled first (tests/conftest.py)

def _group_alive(pgid: int) -> list[int]:
    """Pids of the live (not zombie) processes in process group ``pgid``."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(int(stat.parent.name))
    return alive


def _child_run(out: Path, cfg: SearchConfig) -> subprocess.Popen:
    code = ("import sys, json; from einc.runtime.search import SearchConfig, run_search; "
            "run_search(SearchConfig(**json.loads(sys.argv[1])), sys.argv[2])")
    return subprocess.Popen([sys.executable, "-c", code, json.dumps(asdict(cfg)), str(out)],
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process groups from /proc (Linux)")
def test_sigkill_of_the_search_kills_its_workers_and_resume_completes(tmp_path):
    """Real processes; the exactness of the replay itself is tests/test_schedule.py's, on a fake evaluator."""
    # lag 1: results enter the journal one proposal late, so two of them show while the search still runs
    cfg = SearchConfig(strategy="re", population=2, tournament=2, lag=1, **dict(TINY, budget=4))
    killed = tmp_path / "killed"
    child = _child_run(killed, cfg)
    journal = killed / "journal.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not journal.exists() or journal.read_text().count('"eval"') < 2):
        time.sleep(0.05)
    assert len(_group_alive(child.pid)) >= 2  # the search and its worker (and multiprocessing's helper)
    os.kill(child.pid, signal.SIGKILL)  # the search process alone, mid-run, as the OOM killer would
    child.wait()
    gone = time.monotonic() + 2.0
    while _group_alive(child.pid) and time.monotonic() < gone:
        time.sleep(0.05)
    assert _group_alive(child.pid) == []  # nothing it started outlives it by 2 s
    before = journal.read_bytes()
    with open(journal, "ab") as f:  # and a crash in the middle of writing a line
        f.write(b'{"index": 5, "kind": "ev')

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = run_search(cfg, killed, resume=True)
    assert any(issubclass(w.category, JournalWarning) for w in caught)
    assert b'{"index": 5, "kind": "ev' in (killed / "journal.jsonl.damaged").read_bytes()
    assert journal.read_bytes().startswith(before)  # the journal before the kill is kept as it was
    records = evals(killed)
    indices = [r["index"] for r in records]
    assert sorted(indices) == sorted(set(indices)) and summary["trained"] == 4  # nothing twice, budget done
    done_before = [line for line in before.decode().splitlines() if '"kind": "eval"' in line]
    assert len(done_before) >= 2 and all(line.encode() in journal.read_bytes() for line in done_before)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process groups from /proc (Linux)")
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_everything_and_says_how_to_resume(tmp_path, signum):
    """SIGINT even when the search inherited it ignored; SIGTERM as a batch scheduler sends it.
    (bench/stress_signals.py sends them at random moments under load.)"""
    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "einc.cli", "search", "--data", "digits10", "--strategy", "rs", "--budget", "50",
           "--epochs", "1", "--batch-size", "64", "--max-params", "100000", "--max-flops", "5000000",
           "--max-activations", "200000", "--workers", "2", "--out", str(out)]
    # SIGINT ignored, as POSIX shells start a background job (`einc search ... &`); exec keeps the pid
    cmd = ["sh", "-c", 'trap "" INT; exec "$@"', "sh", *cmd]
    child = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    journal = out / "journal.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not journal.exists() or '"eval"' not in journal.read_text()):
        time.sleep(0.05)
    os.kill(child.pid, signum)
    _, err = child.communicate(timeout=60)  # well under a second when idle; bounded waits only, under any load
    assert child.returncode == 128 + signum, err[-2000:]
    assert f"einc search --out {out} --resume" in err and "Traceback" not in err
    gone = time.monotonic() + 5.0  # multiprocessing's resource tracker exits when it reads EOF
    while _group_alive(child.pid) and time.monotonic() < gone:
        time.sleep(0.05)
    assert _group_alive(child.pid) == []
    assert any(r["kind"] == "eval" for r in Journal(journal).records())


def test_amp_and_graphs_run_on_a_cpu_with_a_one_line_note(tmp_path):
    r = CliRunner().invoke(main, ["search", "--data", "digits10", "--strategy", "rs", "--budget", "1", "--epochs", "1",
                                  "--batch-size", "64", "--max-params", "50000", "--amp", "--graphs", "--device", "cpu",
                                  "--out", str(tmp_path / "o")])
    assert r.exit_code == 0 and "Traceback" not in r.output
    notes = [line for line in r.output.splitlines() if line.strip().startswith("note:")]
    assert len(notes) == 1 and "CUDA" in notes[0]
    record = next(r for r in Journal(tmp_path / "o" / "journal.jsonl").records() if r["kind"] == "eval")
    assert record["metrics"]["step"] == "eager" and record["metrics"]["amp"] is False
