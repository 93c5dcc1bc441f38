"""Worker pools: run evaluation jobs and yield their outcomes as they finish, isolated from the search.

(The job itself, building and training one candidate, is runtime/candidate.py.)

A search submits ``Job``s and iterates ``results()``; submitting more while iterating is allowed,
which is all a steady-state search (regularised evolution) needs::

    with LocalEvaluator(workers=4, time_limit=300) as ev:
        for _ in range(4):
            ev.submit(next_job())
        for outcome in ev.results():        # ends when nothing is pending
            journal.append(...)
            if budget_left():
                ev.submit(next_job())

``LocalEvaluator`` runs each job in a worker process (forked from a server that has imported
torch once, or spawned where there is no fork server) that is reused across jobs
and replaced after any failure, so a crash, segfault, OOM kill or runaway candidate costs one
failed ``Outcome``, never the search. Workers die with the search: each asks the kernel for
SIGKILL when its parent dies (Linux ``PR_SET_PDEATHSIG``, immediate, even while a job runs; the
fork server exits with the search), and a watchdog thread checks the search every second. ``InlineEvaluator``
runs jobs in-process, for tests and debuggers. A distributed backend (e.g. Ray) only has to
implement the ``Evaluator`` protocol.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import multiprocessing as mp
import os
import pickle
import select
import signal
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from multiprocessing.reduction import ForkingPickler
from typing import Any, Protocol, Self

from einc.errors import EinError, one_line

from .journal import json_default


class EvaluatorError(EinError):
    """An evaluator was set up with impossible settings."""


@dataclass(frozen=True)
class Job:
    """``fn(**kwargs)`` must return a JSON-able dict; ``fn`` must be a top-level (picklable) function."""

    key: str
    fn: Callable[..., dict[str, Any]]
    kwargs: dict[str, Any] = field(default_factory=dict)
    # kwargs naming the search's grammar ("grammar", with "plugins") or dataset ("data", with "data_seed"):
    # a remote backend may load each once and ship the object instead (runtime/candidate.py takes either)
    shared: tuple[str, ...] = ()


@dataclass(frozen=True)
class Outcome:
    """What became of one job. ``reason`` is ``"Kind: message"``; ``detail`` a traceback.

    ``started`` and ``finished`` are epoch seconds (dispatch to a worker, result back), so
    journals show when each evaluation ran and how busy the workers were; ``worker`` names the
    slot that ran it.
    """

    key: str
    status: str                         # "ok" | "failed"
    result: dict[str, Any] | None = None
    reason: str | None = None
    seconds: float = 0.0
    detail: str | None = None
    started: float = 0.0
    finished: float = 0.0
    worker: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class Evaluator(Protocol):
    """Runs submitted jobs, possibly several at once, and yields outcomes in completion order."""

    def submit(self, job: Job) -> None:
        """Queue a job; it starts as soon as a worker is free. Never blocks on a running job."""

    def results(self) -> Iterator[Outcome]:
        """Yield outcomes as jobs finish, including jobs submitted meanwhile; stop when none is pending."""

    @property
    def pending(self) -> int:
        """Submitted jobs whose outcome has not been yielded yet."""

    def close(self) -> None:
        """Stop all workers; queued and running jobs are dropped."""


# --------------------------------------------------------------------------- running one job


def run_job(fn: Callable[..., Any], kwargs: dict[str, Any]) -> tuple[str, dict[str, Any] | None, str | None,
                                                                    str | None]:
    """(status, result, reason, detail); the result comes back as plain JSON (numpy scalars converted)."""
    try:
        result = fn(**kwargs)
        if not isinstance(result, dict):
            raise TypeError(f"a job returns a dict, not {type(result).__name__}")
        try:
            result = json.loads(json.dumps(result, allow_nan=False, default=json_default))
        except (TypeError, ValueError) as e:
            raise TypeError(f"the job's result is not plain JSON ({e})") from None
        return "ok", result, None, None
    except (Exception, SystemExit) as e:
        return "failed", None, one_line(e), traceback.format_exc()


class InlineEvaluator:
    """Runs jobs one at a time in this process, when ``results()`` asks; no isolation, no time limit."""

    def __init__(self) -> None:
        self._queue: deque[Job] = deque()

    def submit(self, job: Job) -> None:
        self._queue.append(job)

    def results(self) -> Iterator[Outcome]:
        while self._queue:
            job = self._queue.popleft()
            start, wall = time.monotonic(), time.time()
            status, result, reason, detail = run_job(job.fn, job.kwargs)
            yield Outcome(job.key, status, result, reason, time.monotonic() - start, detail, wall, time.time(),
                          "inline")

    @property
    def pending(self) -> int:
        return len(self._queue)

    def close(self) -> None:
        self._queue.clear()

    def __enter__(self) -> InlineEvaluator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- worker processes

_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
_REAP = 2.0
_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}
"""Seconds to wait for a killed worker to be gone (every wait in a stop is bounded)."""
_PR_SET_PDEATHSIG = 1


def _die_with(search: int) -> None:
    """Make sure this worker does not outlive the search process ``search``, however it ends.

    The kernel kills the worker when its parent dies (``PR_SET_PDEATHSIG``); but the parent of a
    forked worker is the fork server, which exits only after the search does. So a watchdog
    thread also waits on the search itself: on a pidfd where the kernel has them (it wakes the
    moment the search exits, zombie or not), else by polling its state every 0.2 s.
    """
    with contextlib.suppress(Exception):  # not Linux, or no libc: the watchdog alone covers it
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    try:
        pidfd: int | None = os.pidfd_open(search)
    except (AttributeError, OSError):  # not Linux >= 5.3, or the search is gone already
        pidfd = None
    if not _alive(search):
        os._exit(1)

    def watch() -> None:
        if pidfd is not None:
            select.select([pidfd], [], [])  # readable once the search has exited
        else:
            while _alive(search):
                time.sleep(0.2)
        os._exit(1)

    threading.Thread(target=watch, name="einc-watchdog", daemon=True).start()


def _alive(pid: int) -> bool:
    """``pid`` runs and is not a zombie (``kill(pid, 0)`` succeeds on a zombie, which is dead all the same)."""
    try:
        os.kill(pid, 0)
    except OSError:  # no such process, or one of someone else's: the pid was reused
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except (OSError, IndexError):  # no /proc (not Linux): kill's answer stands
        return True


def _worker(conn: Connection, threads: int | None, parent: int, name: str,
            prepare: Callable[[], Any] | None) -> None:
    """Worker loop: receive (fn, kwargs), reply (status, result, reason, detail); exit after a failure."""
    _die_with(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the search's to handle; it then kills us
    os.environ["EINC_WORKER"] = name
    if threads:
        for var in _THREAD_VARS:  # read by torch/numpy when they are first imported, by the first job
            os.environ[var] = str(threads)
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(threads)
    unprepared = None
    if prepare is not None:  # imports, CUDA start, data: overlaps the search's own set-up
        try:
            prepare()
        except Exception as e:  # e.g. the GPU memory cap did not apply: no job may run without it
            unprepared = (f"{one_line(e)} (while preparing the worker)", traceback.format_exc())
    while True:
        try:
            data = conn.recv_bytes()
        except (EOFError, OSError):
            return  # the search went away
        try:
            message = pickle.loads(data)
        except Exception as e:
            reason = f"{one_line(e)} (while loading the job in the worker)"
            conn.send(("failed", None, reason, traceback.format_exc()))
            return
        if message is None:
            return
        if unprepared is not None:  # the job's outcome says why; a fresh worker tries again
            conn.send(("failed", None, *unprepared))
            return
        reply = run_job(*message)
        try:
            conn.send(reply)
        except Exception as e:
            with contextlib.suppress(Exception):  # the search may be gone; nothing left to tell
                conn.send(("failed", None, f"{one_line(e)} (while sending the result back)", None))
            return
        if reply[0] != "ok":
            return  # a failed job may leave the process damaged (CUDA context, leaked memory): start afresh


@dataclass(eq=False)
class _Slot:
    name: str
    proc: BaseProcess | None = None
    conn: Connection | None = None
    job: Job | None = None
    started: float = 0.0
    wall: float = 0.0
    used: bool = False  # this process has taken a job, so it is past ``prepare`` and reads messages


class SlotPool:
    """What every worker pool shares: queued jobs, slots that run one job each, finished outcomes.

    A pool sets ``_queue``, ``_done`` and ``_slots`` (each slot has a ``job``, None when free, and
    the ``name``, ``started`` and ``wall`` of its run) and implements ``_dispatch`` (start queued
    jobs on free slots), ``_wait`` (block until a slot has news) and ``close``; ``results``,
    ``pending`` and ``with`` are then the ``Evaluator`` protocol's, and ``_finish`` records an outcome.
    """

    _queue: deque[Any]
    _done: deque[Outcome]
    _slots: list[Any]

    @staticmethod
    def _check(workers: int, time_limit: float | None) -> None:
        if workers < 1:
            raise EvaluatorError(f"workers={workers}; at least one worker is needed")
        if time_limit is not None and not time_limit > 0:
            raise EvaluatorError(f"time_limit={time_limit}; it must be a positive number of seconds")

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _finish(self, slot: Any, now: float, status: str, result: dict[str, Any] | None, reason: str | None,
                detail: str | None) -> None:
        """``slot``'s job ended at monotonic time ``now``: its outcome, and the slot is free."""
        assert slot.job is not None
        self._done.append(Outcome(slot.job.key, status, result, reason, now - slot.started, detail, slot.wall,
                                  slot.wall + (now - slot.started), slot.name))
        slot.job = None

    def _dispatch(self) -> None:
        raise NotImplementedError

    def _wait(self) -> None:
        raise NotImplementedError

    def results(self) -> Iterator[Outcome]:
        while True:
            self._dispatch()
            if self._done:
                yield self._done.popleft()
            elif self._queue or any(s.job is not None for s in self._slots):
                self._wait()
            else:
                return

    @property
    def pending(self) -> int:
        return len(self._queue) + len(self._done) + sum(s.job is not None for s in self._slots)


# What every training worker imports: a fork server imports it once, and each worker starts as a
# fork of it in milliseconds instead of importing torch anew (a second or more per worker, paid
# again whenever a failed candidate's worker is replaced). Nothing here touches CUDA.
_PRELOAD = ["einc.runtime.fork_server", "torch", "einc.runtime.candidate", "einc.runtime.train"]


def _context() -> mp.context.ForkServerContext | mp.context.SpawnContext:
    if "forkserver" not in mp.get_all_start_methods():  # Windows
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(_PRELOAD)  # read when the server starts: at the first worker's start
    return ctx


class LocalEvaluator(SlotPool):
    """``workers`` persistent processes on this machine, each job killed after ``time_limit`` s.

    ``threads`` caps torch/BLAS threads per worker (set it to cores // workers for CPU training).
    ``prepare`` (a top-level function) runs once in each worker as it starts; ``start()`` starts
    them all at once, so their imports overlap the caller's own set-up. Each worker sees its slot
    number in ``EINC_WORKER`` (to pick a GPU, say). Workers are daemonic, so a job cannot start
    processes of its own (no DataLoader workers). The time limit counts from dispatch, so it
    includes a fresh worker's start (well under a second, plus whatever the job imports).
    """

    def __init__(self, workers: int = 1, time_limit: float | None = None, threads: int | None = None,
                 prepare: Callable[[], Any] | None = None):
        self._check(workers, time_limit)
        self.time_limit, self.threads, self.prepare = time_limit, threads, prepare
        self._ctx = _context()
        self._slots = [_Slot(str(i)) for i in range(workers)]
        self._queue: deque[Job] = deque()
        self._done: deque[Outcome] = deque()

    def start(self) -> LocalEvaluator:
        """Start every worker now rather than at its first job."""
        for slot in self._slots:
            if slot.proc is None:
                self._start(slot)
        return self

    def submit(self, job: Job) -> None:
        self._queue.append(job)
        self._dispatch()

    def close(self) -> None:
        self._queue.clear()
        self._done.clear()
        # idle workers exit cleanly; one that never took a job may still be in ``prepare`` (importing
        # torch, a second or more) and has nothing to finish: it is killed rather than waited for
        idle = [s for s in self._slots if s.proc is not None and s.job is None and s.conn is not None and s.used]
        for slot in idle:
            with contextlib.suppress(OSError):
                slot.conn.send_bytes(pickle.dumps(None))  # type: ignore[union-attr]  # let it exit cleanly
        for slot in self._slots:
            if slot in idle:
                slot.proc.join(timeout=1.0)  # type: ignore[union-attr]
            self._retire(slot)  # kills whatever is still running

    # ------------------------------------------------------------------ internals

    def _start(self, slot: _Slot) -> None:
        parent, child = self._ctx.Pipe()
        # daemon: stopped when the search exits; killed by the kernel when the search is (_die_with).
        proc = self._ctx.Process(target=_worker, args=(child, self.threads, os.getpid(), slot.name, self.prepare),
                                 daemon=True, name=f"einc-worker-{slot.name}")
        # The first start spawns the fork server (it ignores Ctrl-C from its first import on:
        # einc.runtime.fork_server). Here a signal waits until the start has finished, so no
        # started worker goes untracked.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            proc.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        child.close()
        slot.proc, slot.conn = proc, parent

    def _retire(self, slot: _Slot) -> None:
        if slot.proc is not None:
            if slot.proc.is_alive():
                slot.proc.kill()
            slot.proc.join(timeout=_REAP)  # SIGKILL is prompt; a process stuck in the kernel is not waited for
        if slot.conn is not None:
            slot.conn.close()
        slot.proc = slot.conn = slot.job = None
        slot.used = False

    def _dispatch(self) -> None:
        for slot in self._slots:
            while slot.job is None and self._queue:
                job = self._queue.popleft()
                try:
                    data = bytes(ForkingPickler.dumps((job.fn, job.kwargs)))
                except Exception as e:
                    now = time.time()
                    self._done.append(Outcome(job.key, "failed", reason=one_line(e), detail=traceback.format_exc(),
                                              started=now, finished=now, worker=slot.name))
                    continue
                for attempt in (1, 2):  # an idle worker may have died since its last job
                    if slot.proc is None or not slot.proc.is_alive():
                        self._retire(slot)
                        self._start(slot)
                    # busy before the send: a stop between the two must not take a running worker for idle
                    slot.job, slot.started, slot.wall, slot.used = job, time.monotonic(), time.time(), True
                    try:
                        slot.conn.send_bytes(data)  # type: ignore[union-attr]
                        break
                    except OSError as e:
                        self._retire(slot)
                        if attempt == 2:
                            reason = f"WorkerDied: cannot send the job to a worker ({one_line(e)})"
                            now = time.time()
                            self._done.append(Outcome(job.key, "failed", reason=reason, started=now,
                                                      finished=now, worker=slot.name))

    def _wait(self) -> None:
        busy = [s for s in self._slots if s.job is not None]
        timeout = None
        if self.time_limit is not None:
            timeout = max(0.0, min(s.started for s in busy) + self.time_limit - time.monotonic())
        handles: list[Any] = [s.conn for s in busy]
        handles += [s.proc.sentinel for s in busy]  # type: ignore[union-attr]
        ready = set(wait(handles, timeout))
        now = time.monotonic()
        for slot in busy:
            if slot.conn in ready or slot.proc.sentinel in ready:  # type: ignore[union-attr]
                self._collect(slot, now)
            elif self.time_limit is not None and now - slot.started >= self.time_limit:
                reason = f"Timeout: time limit of {self.time_limit:g}s exceeded; worker killed"
                self._finish(slot, now, "failed", None, reason, None)
                self._retire(slot)

    def _collect(self, slot: _Slot, now: float) -> None:
        assert slot.conn is not None and slot.proc is not None
        try:
            if not slot.conn.poll():
                raise EOFError
            status, result, reason, detail = slot.conn.recv()
        except (EOFError, OSError, pickle.UnpicklingError):
            slot.proc.join(timeout=1.0)
            self._finish(slot, now, "failed", None, _death(slot.proc.exitcode), None)
            self._retire(slot)
            return
        self._finish(slot, now, status, result, reason, detail)
        if status != "ok":
            self._retire(slot)  # the worker exits after a failure; replace it on the next dispatch


def _death(exitcode: int | None) -> str:
    if exitcode is None:
        return "WorkerDied: the worker process closed its pipe without replying"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = " (out of memory?)" if exitcode == -signal.SIGKILL else ""
        return f"WorkerDied: the worker process was killed by {name}{hint}"
    return f"WorkerDied: the worker process exited with code {exitcode}"
