"""LocalEvaluator isolates failures in worker processes; InlineEvaluator runs the same jobs in-process."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import time

import pytest

from einc.errors import EinError
from einc.runtime import workers
from einc.runtime.workers import Evaluator, InlineEvaluator, Job, LocalEvaluator, Outcome

import _jobs


def run(ev: Evaluator, *jobs: Job) -> dict[str, Outcome]:
    for job in jobs:
        ev.submit(job)
    return {o.key: o for o in ev.results()}


def test_successful_jobs_reuse_one_worker_and_return_plain_json():
    with LocalEvaluator(workers=1) as ev:
        out = run(ev, Job("a", _jobs.square, {"x": 3}), Job("b", _jobs.pid), Job("c", _jobs.numpy_result))
        assert ev.pending == 0
    assert all(o.ok and o.reason is None and o.seconds >= 0 for o in out.values())
    assert out["a"].result["y"] == 9
    assert out["a"].result["pid"] == out["b"].result["pid"]  # persistent worker
    assert out["c"].result == {"acc": 0.5, "n": 3} and type(out["c"].result["acc"]) is float


@pytest.mark.skipif("forkserver" not in multiprocessing.get_all_start_methods(), reason="no fork server here")
def test_workers_fork_from_a_server_that_has_imported_torch_once():
    with LocalEvaluator(workers=2) as ev:
        out = run(ev, Job("a", _jobs.started_as), Job("b", _jobs.started_as))
        first = run(ev, Job("boom", _jobs.boom))  # its worker is replaced by a fresh fork
        again = run(ev, Job("c", _jobs.started_as), Job("d", _jobs.started_as))
    assert first["boom"].status == "failed"
    results = [o.result for o in (*out.values(), *again.values())]
    assert all(r["torch"] for r in results)  # torch came with the fork; the jobs import nothing
    assert len({r["parent"] for r in results}) == 1 and results[0]["parent"] != os.getpid()


@pytest.mark.skipif("forkserver" not in multiprocessing.get_all_start_methods(), reason="no fork server here")
def test_the_fork_server_ignores_ctrl_c_from_its_first_import():
    """Ctrl-C reaches the whole process group; while the fork server imported torch (seconds) one
    printed its KeyboardInterrupt traceback. Its first import now ignores SIGINT, there only."""
    assert workers._PRELOAD[0] == "einc.runtime.fork_server"
    probe = ("import signal; signal.signal(signal.SIGINT, signal.default_int_handler); "  # whatever we inherited
             "import einc.runtime.fork_server; print(signal.getsignal(signal.SIGINT) is signal.SIG_IGN)")
    as_server = f"from multiprocessing.forkserver import main; {probe}"  # how multiprocessing starts one
    seen = [subprocess.run([sys.executable, "-c", c], capture_output=True, text=True, check=True).stdout.strip()
            for c in (as_server, probe)]
    assert seen == ["True", "False"]


def test_without_a_fork_server_workers_are_spawned(monkeypatch):
    monkeypatch.setattr(multiprocessing, "get_all_start_methods", lambda: ["spawn"])  # as on Windows
    with LocalEvaluator(workers=1) as ev:
        out = run(ev, Job("a", _jobs.started_as))["a"]
    assert out.ok and out.result == {"torch": False, "parent": os.getpid()}  # a fresh interpreter, our child


def test_close_lets_a_used_worker_exit_and_kills_one_still_preparing():
    import functools

    with LocalEvaluator(workers=1) as ev:
        run(ev, Job("a", _jobs.pid))
        (used,) = [slot.proc for slot in ev._slots]
    assert used.exitcode == 0  # it read the stop message and returned
    ev = LocalEvaluator(workers=1, prepare=functools.partial(time.sleep, 60)).start()
    (preparing,) = [slot.proc for slot in ev._slots]
    waits = []
    join = preparing.join
    preparing.join = lambda timeout=None: (waits.append(timeout), join(timeout))  # type: ignore[method-assign]
    ev.close()  # an error before the first job (bad --data, say) is reported at once
    assert waits == [workers._REAP] and preparing.exitcode == -9  # killed, then reaped: no grace period


def test_exception_is_a_failed_outcome_and_the_worker_is_replaced():
    with LocalEvaluator(workers=1) as ev:
        first = run(ev, Job("p", _jobs.pid))["p"].result["pid"]
        out = run(ev, Job("bad", _jobs.boom, {"message": "no good"}), Job("wrong", _jobs.not_a_dict),
                  Job("after", _jobs.pid))
    assert out["bad"].status == "failed" and out["bad"].reason == "ValueError: no good"
    assert "Traceback" in out["bad"].detail and out["bad"].result is None
    assert out["wrong"].reason.startswith("TypeError: a job returns a dict")
    assert out["after"].ok and out["after"].result["pid"] != first


def test_time_limit_kills_the_job_and_the_evaluator_goes_on():
    with LocalEvaluator(workers=1, time_limit=1.0) as ev:
        run(ev, Job("warm", _jobs.pid))  # a fresh worker's start counts against the limit
        start = time.monotonic()
        out = run(ev, Job("slow", _jobs.sleep, {"seconds": 30}), Job("next", _jobs.square, {"x": 2}))
        assert time.monotonic() - start < 10
    assert out["slow"].status == "failed" and "time limit" in out["slow"].reason
    assert 1.0 <= out["slow"].seconds < 5
    assert out["next"].ok and out["next"].result["y"] == 4


def test_a_dead_worker_is_a_failed_outcome_and_the_evaluator_goes_on():
    with LocalEvaluator(workers=1) as ev:
        out = run(ev, Job("exit", _jobs.hard_exit, {"code": 3}), Job("kill", _jobs.self_kill),
                  Job("orphan", _jobs.exit_leaving_a_child, {"code": 4}), Job("next", _jobs.square, {"x": 5}))
    assert out["exit"].status == "failed" and "exited with code 3" in out["exit"].reason
    assert out["orphan"].status == "failed" and "exited with code 4" in out["orphan"].reason  # no wait for its child
    assert out["kill"].status == "failed" and "SIGKILL" in out["kill"].reason
    assert out["next"].ok and out["next"].result["y"] == 25


def test_jobs_run_in_parallel_and_outcomes_come_as_they_finish():
    with LocalEvaluator(workers=2) as ev:
        ev.submit(Job("slow", _jobs.sleep, {"seconds": 1.0}))
        ev.submit(Job("fast", _jobs.sleep, {"seconds": 0.0}))
        keys = []
        for outcome in ev.results():
            keys.append(outcome.key)
            if outcome.key == "fast":
                ev.submit(Job("late", _jobs.square, {"x": 1}))  # submitting while iterating is allowed
        assert ev.pending == 0
    assert keys[0] == "fast" and sorted(keys) == ["fast", "late", "slow"]


def test_an_unpicklable_job_fails_without_harming_the_worker():
    with LocalEvaluator(workers=1) as ev:
        out = run(ev, Job("lambda", lambda: {}), Job("next", _jobs.pid))
    assert out["lambda"].status == "failed" and "pickle" in out["lambda"].reason.lower()
    assert out["next"].ok


def test_inline_evaluator_runs_the_same_jobs_in_process():
    ev = InlineEvaluator()
    out = run(ev, Job("a", _jobs.square, {"x": 4}), Job("bad", _jobs.boom), Job("c", _jobs.numpy_result))
    assert out["a"].ok and out["a"].result["y"] == 16
    assert out["bad"].reason == "ValueError: bad candidate"
    assert out["c"].result == {"acc": 0.5, "n": 3}
    assert ev.pending == 0


@pytest.mark.parametrize("kwargs", [{"workers": 0}, {"time_limit": 0}])
def test_impossible_settings_are_ein_errors(kwargs):
    with pytest.raises(EinError):
        LocalEvaluator(**kwargs)


def test_a_training_job_runs_in_a_worker_with_capped_threads():
    with LocalEvaluator(workers=1, time_limit=60, threads=2) as ev:  # not the session's 1 (tests/conftest.py)
        out = run(ev, Job("train", _jobs.train_tiny, {"seed": 0}))["train"]
    assert out.ok, out.reason
    assert 0.0 <= out.result["val_acc"] <= 1.0 and out.result["epochs"] == 1 and out.result["threads"] == 2


def test_a_worker_that_failed_to_prepare_says_why_in_its_jobs_outcome():
    import functools

    with LocalEvaluator(workers=1, prepare=functools.partial(_jobs.boom, "cannot cap GPU memory")) as ev:
        out = run(ev, Job("a", _jobs.square, {"x": 2}))
    assert out["a"].status == "failed"
    assert out["a"].reason == "ValueError: cannot cap GPU memory (while preparing the worker)"
    assert "Traceback" in out["a"].detail


def test_a_zombie_is_not_alive():
    child = multiprocessing.get_context("fork").Process(target=os._exit, args=(0,))
    child.start()
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{child.pid}") and workers._alive(child.pid) and time.monotonic() < deadline:
        time.sleep(0.01)  # exited, not yet reaped: kill(pid, 0) still succeeds on it
    assert os.path.exists(f"/proc/{child.pid}") and not workers._alive(child.pid)
    child.join()
    assert workers._alive(os.getpid())
