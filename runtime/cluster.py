"""Evaluate on a Ray cluster: ``RayEvaluator``, the ``Evaluator`` protocol over long-lived Ray actors.

::

    with RayEvaluator(workers=8, address="HEAD:6379", gpus_per_eval=0.5, retries=1) as ev:
        summary = run_search(config, out, evaluator=ev)

Design (measured on a 2-core machine with Ray 2.60; see README "Many GPUs, many machines"):

* **Actors, not tasks.** A remote function with ``num_gpus > 0`` gets ``max_calls=1``: every GPU
  task starts a fresh worker process (import torch, CUDA context, data to the device), about
  5 s per task here against 1 ms for a call to a live actor. So the evaluator keeps one actor per
  worker slot (``num_gpus=gpus_per_eval``) for the whole search and does the retries itself.
* **Data and grammar go to the cluster once.** The driver loads the dataset and compiles the
  grammar (plugins included: their functions are pickled by value, so no shared filesystem is
  needed) and ``ray.put``s each once; a job carries references nested in a ``_Shared`` marker, so
  Ray does not resolve them per call, and each actor resolves each reference once and keeps the
  object (its tensors on the device are then cached across jobs too).
* **Faults.** An actor (or its node) that dies mid-evaluation is replaced and the job resubmitted,
  up to ``retries`` times; then it is a failed ``Outcome`` ("WorkerDied: ..."). A job that fails in
  a live actor (exception, NaN, GPU out of memory) is a failed ``Outcome`` at once, and that actor
  is replaced, as ``LocalEvaluator`` replaces its worker process. ``time_limit`` kills the actor.
  GPU fractions are admission control only: each actor caps its share of the GPU's memory at
  ``gpus_per_eval``, so a greedy candidate fails with ``OutOfMemory`` instead of its neighbours.
* **The cluster's loss.** Ray ends a driver process itself (``_Exit(1)`` from its C++ core, no
  Python exception, no ``finally``) when the raylet on its machine dies (killing
  ``ray::DashboardAgent`` takes the raylet down: Ray fate-shares the raylet with its agents and
  Ray 2.60 always starts them, ``include_dashboard=False`` or not) or when the cluster's head
  (GCS) stops answering. ``einc search --ray`` therefore drives Ray from a child process
  (``IsolatedRayEvaluator``): its death is ``ClusterLost`` in the search, one line, with the
  journal intact; the child's output (Ray's log lines) goes to a log file, not the terminal.
  In-process, ``RayEvaluator`` raises ``ClusterLost`` where Python can see the loss (the runtime
  was shut down under it).
* **Ownership.** ``close()`` kills every actor (cancelling what runs on them) and disconnects; the
  Ray runtime is shut down only when this evaluator started it (``address="local"`` with no Ray
  running in this process). A cluster it joined keeps running; a runtime already initialised in
  this process (tests, notebooks) is used as is and left alone.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import json
import logging
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing import Pipe
from multiprocessing.connection import Connection
from typing import Any

from .workers import EvaluatorError, Job, Outcome, SlotPool, one_line, run_job

INSTALL_HINT = "einc search --ray needs Ray: pip install 'einc[ray]'"
START_TIMEOUT = 600.0
"""Seconds jobs may wait while no actor at all can start (the cluster lacks the resources) before they fail."""
STOP_TIMEOUT = 30.0
"""Seconds ``IsolatedRayEvaluator.close`` waits for its driver process to kill its actors and stop Ray."""


class RayMissing(EvaluatorError):
    """Ray is not installed."""


class ClusterLost(EvaluatorError):
    """The Ray cluster (or this machine's part of it) is gone: no evaluation can run, the search stops.

    ``reason`` says what happened ("error: ..."); ``resume`` is the command that continues the
    search, where the evaluator was told it (``search_evaluator`` tells it), and then ends the
    message as "; continue with: COMMAND". A caller that knows better can build its own line
    from ``reason``. The journal is the search's, written in this process: nothing of it is lost.
    """

    def __init__(self, reason: str, resume: str | None = None) -> None:
        super().__init__(reason + (f"; continue with: {resume}" if resume else ""))
        self.reason, self.resume = reason, resume

    def __reduce__(self):
        return type(self), (self.reason, self.resume)


def import_ray():
    try:
        import ray
    except ImportError:
        raise RayMissing(INSTALL_HINT) from None
    return ray


@dataclass(frozen=True)
class _Shared:
    """An object put in the object store once; actors resolve it once and keep it."""

    ref: Any


# --------------------------------------------------------------------------- the actor


class _Worker:
    """One evaluation slot: a long-lived process that runs jobs one at a time."""

    def __init__(self, name: str, threads: int, memory_fraction: float) -> None:
        os.environ["EINC_WORKER"] = name  # not a digit: Ray already picked this actor's GPU
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ[var] = str(threads)
        # zero-copy arrays from the object store are read-only; jobs never write to their data
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        import torch

        torch.set_num_threads(threads)
        import einc.runtime.candidate  # noqa: F401  imports now, not in the first job
        import einc.runtime.train as train

        if memory_fraction < 1 and torch.cuda.is_available():
            train.limit_memory(memory_fraction, "cuda")
        self._objects: dict[str, Any] = {}

    def ready(self) -> tuple[str, str, int]:
        import ray

        ctx = ray.get_runtime_context()
        return ctx.get_node_id(), ray.util.get_node_ip_address(), os.getpid()

    def run(self, fn, kwargs: dict[str, Any]):
        kwargs = {k: self._resolve(v) if isinstance(v, _Shared) else v for k, v in kwargs.items()}
        return run_job(fn, kwargs)

    def _resolve(self, shared: _Shared) -> Any:
        import ray

        key = shared.ref.hex()
        if key not in self._objects:
            self._objects[key] = ray.get(shared.ref)
        return self._objects[key]


# --------------------------------------------------------------------------- the driver side


@dataclass(eq=False)
class _Slot:
    index: int
    actor: Any = None
    ready: Any = None             # ObjectRef of actor.ready() while the actor starts
    since: float = 0.0            # monotonic time the actor was asked for
    name: str = ""
    job: Job | None = None
    attempt: int = 0
    ref: Any = None               # ObjectRef of the running job
    started: float = 0.0
    wall: float = 0.0
    failures: int = 0             # consecutive actor start failures
    pid: int | None = None        # the actor's process, once started


class RayEvaluator(SlotPool):
    """``workers`` long-lived Ray actors, each evaluating one job at a time.

    ``address``: "local" (or None) starts a Ray runtime on this machine unless one is already
    initialised in this process; "HOST:PORT" (or "auto") joins a running cluster.
    ``gpus_per_eval``: GPUs reserved per actor, fractions allowed; None: 1 when the cluster has
    GPUs, else 0 (and jobs without an explicit device then train on the CPU).
    ``cpus_per_eval``: CPUs reserved per actor (its torch threads); None: 1 with GPUs, else the
    cluster's CPUs shared among the workers (at most one node's). ``retries``: resubmissions of a
    job whose actor or node died. ``time_limit``: seconds from dispatch before the actor is killed.
    """

    def __init__(self, workers: int = 1, *, address: str | None = "local", gpus_per_eval: float | None = None,
                 cpus_per_eval: float | None = None, retries: int = 1, time_limit: float | None = None,
                 init_kwargs: dict[str, Any] | None = None, resume: str | None = None):
        self._check(workers, time_limit)
        self.resume = resume  # the command that continues the search, for ClusterLost
        if retries < 0:
            raise EvaluatorError(f"retries={retries}; it must be 0 or more")
        if gpus_per_eval is not None and (gpus_per_eval < 0 or (gpus_per_eval > 1 and gpus_per_eval % 1)):
            raise EvaluatorError(f"gpus per evaluation {gpus_per_eval:g}: a fraction of one GPU or a whole number")
        ray = self._ray = import_ray()
        self.retries, self.time_limit = retries, time_limit
        self._owns_runtime = self._connected = False
        if not ray.is_initialized():
            local = address in (None, "local")
            kwargs = dict(logging_level=logging.WARNING, log_to_driver=False)
            kwargs.update(init_kwargs or {})
            try:
                # "local" is a runtime of its own: address=None would join any cluster running on this
                # machine (one `ray start` or a test left), whose workers are not this search's
                ray.init(address="local" if local else address, **kwargs)
            except Exception as e:  # ConnectionError, ValueError, ...: one line, no traceback
                where = "start a local Ray runtime" if local else f"connect to the Ray cluster at {address}"
                hint = "" if local else (" (is Ray running there, and does this machine have the cluster's token: "
                                         "RAY_AUTH_MODE=token, and RAY_AUTH_TOKEN or ~/.ray/auth_token?)")
                raise EvaluatorError(f"error: cannot {where}: {one_line(e)}{hint}") from None
            self._owns_runtime, self._connected = local, True
        try:
            self._plan(workers, gpus_per_eval, cpus_per_eval)
        except BaseException:
            self._disconnect()
            raise
        self._queue: deque[tuple[Job, int]] = deque()
        self._done: deque[Outcome] = deque()
        self._shared: dict[tuple, _Shared] = {}
        self._closed = False
        self._broken = "no reason known"
        self.resubmitted = 0  # jobs run again after their actor or node died
        self._slots = [_Slot(i) for i in range(workers)]
        self._remote = ray.remote(_Worker).options(num_cpus=self.cpus_per_eval, num_gpus=self.gpus_per_eval,
                                                   max_restarts=0, max_concurrency=1)
        for slot in self._slots:
            self._start(slot)

    def _plan(self, workers: int, gpus: float | None, cpus: float | None) -> None:
        nodes = [n.get("Resources", {}) for n in self._ray.nodes() if n.get("Alive")]
        node_gpus = max((r.get("GPU", 0.0) for r in nodes), default=0.0)
        node_cpus = max((r.get("CPU", 0.0) for r in nodes), default=0.0)
        total_cpus = sum(r.get("CPU", 0.0) for r in nodes)
        gpus = (1.0 if node_gpus >= 1 else 0.0) if gpus is None else float(gpus)
        if gpus > node_gpus:
            raise EvaluatorError(f"error: --gpus-per-eval {gpus:g}, but no node of the Ray cluster has that many "
                                 f"GPUs (the most on one node: {node_gpus:g}); use --gpus-per-eval 0 to train on CPUs")
        if cpus is None:
            cpus = 1.0 if gpus else float(max(1, math.floor(min(node_cpus, total_cpus / workers))))
        if cpus > node_cpus:
            raise EvaluatorError(f"error: {cpus:g} CPUs per evaluation, but no node of the Ray cluster has that "
                                 f"many (the most on one node: {node_cpus:g})")
        self.gpus_per_eval, self.cpus_per_eval = gpus, cpus
        self.threads = max(1, int(cpus))

    # ------------------------------------------------------------------ the protocol

    def submit(self, job: Job) -> None:
        if self._closed:
            raise EvaluatorError("this evaluator is closed")
        self._check_runtime()
        try:
            job = Job(job.key, job.fn, self._prepare(job))
        except Exception as e:  # the data or grammar cannot be loaded here: that job fails, the search goes on
            now = time.time()
            self._done.append(Outcome(job.key, "failed", reason=one_line(e), started=now, finished=now))
            return
        self._queue.append((job, 0))
        self._dispatch()

    def close(self) -> None:
        """Kill every actor (what runs on them ends with them) and let go of Ray; idempotent."""
        if getattr(self, "_closed", True):
            self._disconnect()
            return
        self._closed = True
        self._queue.clear()
        self._done.clear()
        if not self._ray.is_initialized():  # shut down under us: nothing to kill, and a call would start Ray anew
            self._slots.clear()
        for slot in self._slots:
            if slot.ref is not None:
                with contextlib.suppress(Exception):
                    self._ray.cancel(slot.ref)
            self._kill(slot)
        self._shared.clear()
        self._disconnect()

    # ------------------------------------------------------------------ internals

    def _check_runtime(self) -> None:
        """``ClusterLost`` when the Ray runtime was shut down under this evaluator (the next Ray call would
        silently start a fresh local one, with none of our actors)."""
        if not self._ray.is_initialized():
            raise ClusterLost("error: the Ray runtime was shut down during the search; the evaluations "
                              "running on it are lost", self.resume)

    def _disconnect(self) -> None:
        if self._connected:
            self._connected = False
            with contextlib.suppress(Exception):
                self._ray.shutdown()  # a local runtime we started stops; a joined cluster keeps running

    def _prepare(self, job: Job) -> dict[str, Any]:
        """The grammar and data a job shares (``Job.shared``) as objects put once in the object store."""
        from . import candidate

        kwargs = dict(job.kwargs)
        if "data" in job.shared and isinstance(kwargs.get("data"), str):
            data: tuple = ("data", kwargs["data"], kwargs.get("data_seed", 0), kwargs.get("task"), kwargs.get("metric"))
            kwargs["data"] = self._put(data, lambda: candidate.cached_dataset(*data[1:]))  # as the job's task
        if "grammar" in job.shared and isinstance(kwargs.get("grammar"), str):
            key = ("grammar", kwargs["grammar"], tuple(kwargs.get("plugins", ())))
            kwargs["grammar"] = self._put(key, lambda: candidate.cached_grammar(key[1], key[2]))
        if not self.gpus_per_eval and "device" in kwargs and kwargs["device"] is None:
            kwargs["device"] = "cpu"  # no GPU reserved for this actor: do not crowd onto one anyway
        return kwargs

    def _put(self, key: tuple, load) -> _Shared:
        if key not in self._shared:
            self._shared[key] = _Shared(self._ray.put(load()))
        return self._shared[key]

    def _start(self, slot: _Slot) -> None:
        slot.actor = self._remote.remote(f"ray-{slot.index}", self.threads, self.gpus_per_eval or 1.0)
        slot.ready, slot.since, slot.name = slot.actor.ready.remote(), time.monotonic(), f"ray-{slot.index}"

    def _kill(self, slot: _Slot) -> None:
        if slot.actor is not None:
            with contextlib.suppress(Exception):
                self._ray.kill(slot.actor, no_restart=True)
        slot.actor = slot.ready = slot.ref = slot.pid = None

    def _replace(self, slot: _Slot) -> None:
        self._kill(slot)
        self._start(slot)

    def _dispatch(self) -> None:
        self._check_runtime()
        for slot in self._slots:
            if slot.job is None and slot.ready is None and slot.actor is not None and self._queue:
                job, attempt = self._queue.popleft()
                slot.job, slot.attempt = job, attempt
                slot.started, slot.wall = time.monotonic(), time.time()
                slot.ref = slot.actor.run.remote(job.fn, job.kwargs)

    def _wait(self) -> None:
        """Wait for a job to finish, an actor to start or a deadline; queued jobs never wait forever."""
        ray = self._ray
        busy = [s for s in self._slots if s.job is not None]
        starting = [s for s in self._slots if s.ready is not None]
        if not busy and not starting:  # every slot is broken: nothing can run what is queued
            self._fail_queue(f"WorkerDied: no Ray worker could be started ({self._broken})")
            return
        deadlines = [s.started + self.time_limit for s in busy] if self.time_limit is not None else []
        if self._queue and not busy:
            deadlines.append(min(s.since for s in starting) + START_TIMEOUT)
        timeout = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
        self._check_runtime()
        try:
            ready, _ = ray.wait([s.ref for s in busy] + [s.ready for s in starting], num_returns=1, timeout=timeout)
        except ray.exceptions.RaySystemError as e:  # this driver lost its connection to Ray
            raise ClusterLost(f"error: lost the Ray cluster ({one_line(e)})", self.resume) from None
        ready = set(ready)
        now = time.monotonic()
        for slot in starting:
            if slot.ready in ready:
                self._started(slot)
        for slot in busy:
            if slot.ref in ready:
                self._collect(slot, now)
            elif self.time_limit is not None and now - slot.started >= self.time_limit:
                reason = f"Timeout: time limit of {self.time_limit:g}s exceeded; worker killed"
                self._finish(slot, now, "failed", None, reason, None)
                self._replace(slot)
        if self._queue and not busy and not ready and now - min(s.since for s in starting) >= START_TIMEOUT:
            self._fail_queue(f"WorkerDied: no Ray worker could start within {START_TIMEOUT:g}s (does a node of "
                             f"the cluster have {self.cpus_per_eval:g} CPUs and {self.gpus_per_eval:g} GPUs free?)")

    def _started(self, slot: _Slot) -> None:
        try:
            node, ip, pid = self._ray.get(slot.ready)
        except Exception as e:  # the actor could not start (or died at once): try again, then give up
            slot.failures += 1
            self._kill(slot)
            if slot.failures < 3:
                self._start(slot)
            else:
                self._broken = f"{one_line(e)}"
            return
        slot.ready, slot.failures, slot.pid, slot.name = None, 0, pid, f"ray-{slot.index}@{ip}/{node[:6]}"

    def _collect(self, slot: _Slot, now: float) -> None:
        ray = self._ray
        try:
            status, result, reason, detail = ray.get(slot.ref)
        except ray.exceptions.RayTaskError as e:  # the actor's own code failed (e.g. unpickling the job)
            cause = e.cause if isinstance(e.cause, BaseException) else e
            self._finish(slot, now, "failed", None, f"{one_line(cause)} (in the Ray worker)", str(e))
            self._replace(slot)
            return
        except ray.exceptions.RayError as e:  # the actor, its process or its node died
            job, attempt = slot.job, slot.attempt
            assert job is not None
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            if attempt < self.retries:
                slot.job = slot.ref = None
                self._queue.appendleft((job, attempt + 1))
                self.resubmitted += 1
            else:
                tries = f"; tried {attempt + 1} times" if attempt else ""
                self._finish(slot, now, "failed", None,
                             f"WorkerDied: the Ray worker died during the evaluation ({type(e).__name__}: "
                             f"{first[:300]}){tries}", str(e))
            self._replace(slot)
            return
        self._finish(slot, now, status, result, reason, detail)
        if status != "ok":
            self._replace(slot)  # a failure may leave the process damaged (CUDA context, leaked memory)

    def _finish(self, slot: _Slot, now: float, status: str, result: dict[str, Any] | None, reason: str | None,
                detail: str | None) -> None:
        super()._finish(slot, now, status, result, reason, detail)
        slot.ref = None

    def _fail_queue(self, reason: str) -> None:
        now = time.time()
        while self._queue:
            job, _ = self._queue.popleft()
            self._done.append(Outcome(job.key, "failed", reason=reason, started=now, finished=now))


# --------------------------------------------------------------------------- the driver in a child process


class IsolatedRayEvaluator:
    """A ``RayEvaluator`` in a child process (the Ray driver), driven over a pipe; same settings, same protocol.

    Ray ends its driver process itself when the raylet on its machine or the cluster's head dies;
    here that process is the child, and its death is ``ClusterLost`` from ``results()`` (or from
    the constructor), in one line. The child's stdout and stderr (Ray's log lines) go to
    ``log``, a temporary file, removed on a clean ``close()`` and named by the error otherwise.
    The child ignores Ctrl-C (the search handles it and then calls ``close()``) and dies with this
    process; Ray kills the actors of a driver that died.
    """

    def __init__(self, workers: int = 1, *, address: str | None = "local", gpus_per_eval: float | None = None,
                 cpus_per_eval: float | None = None, retries: int = 1, time_limit: float | None = None,
                 init_kwargs: dict[str, Any] | None = None, resume: str | None = None):
        SlotPool._check(workers, time_limit)
        if not _ray_installed():  # before any process starts
            raise RayMissing(INSTALL_HINT)
        self.retries, self.time_limit, self.resume = retries, time_limit, resume
        self.resubmitted = 0
        self._pending = 0
        self._busy = self._closed = self._ready = self._keep_log = False
        self._lost: ClusterLost | None = None
        fd, self.log = tempfile.mkstemp(prefix="einc-ray-", suffix=".log")
        ours, theirs = Pipe()
        self._conn: Connection = ours
        code = ("import json, sys; sys.path[:0] = json.loads(sys.argv[1]); "
                "from einc.runtime.cluster import _serve; _serve(int(sys.argv[2]), int(sys.argv[3]))")
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-c", code, json.dumps(sys.path), str(theirs.fileno()), str(os.getpid())],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, stdout=fd, stderr=fd)
        except OSError as e:
            os.close(fd)
            ours.close()
            self._remove_log()
            raise EvaluatorError(f"error: cannot start the Ray driver process: {one_line(e)}") from None
        finally:
            theirs.close()
        os.close(fd)
        settings = dict(workers=workers, address=address, gpus_per_eval=gpus_per_eval, cpus_per_eval=cpus_per_eval,
                        retries=retries, time_limit=time_limit, init_kwargs=init_kwargs, resume=resume)
        try:
            self._send(("start", settings))
            self._busy = True
            kind, value = self._recv()  # Ray starts (or is joined) and the actors are asked for
            self._busy = False
            self._raise_error(kind, value)
        except BaseException:
            self.close()
            raise
        self.gpus_per_eval, self.cpus_per_eval, self.threads = value
        self._ready = True

    @property
    def pid(self) -> int:
        """The driver process."""
        return self._proc.pid

    def submit(self, job: Job) -> None:
        if self._closed:
            raise EvaluatorError("this evaluator is closed")
        self._send(("submit", job))
        self._pending += 1

    def results(self) -> Iterator[Outcome]:
        while self._pending:
            self._send(("next", None))
            self._busy = True
            kind, value = self._recv()
            self._busy = False
            self._raise_error(kind, value)
            outcome, self.resubmitted = value
            if outcome is None:  # the driver has nothing pending: it failed every job already
                self._pending = 0
                return
            self._pending -= 1
            yield outcome

    @property
    def pending(self) -> int:
        return self._pending

    def close(self) -> None:
        """Stop the driver (it kills its actors and lets go of Ray, as ``RayEvaluator.close``); idempotent."""
        if self._closed:
            return
        self._closed = True
        self._pending = 0
        proc, stopped = self._proc, False
        if proc.poll() is None:
            if self._busy:  # a reply is due (Ctrl-C interrupted the wait for it): interrupt the driver's wait
                proc.send_signal(signal.SIGTERM)
                stopped = True  # it exits with 1 then, as asked
            else:
                with contextlib.suppress(OSError):
                    self._conn.send(("close", None))
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()  # Ray still kills the actors of a dead driver
                proc.wait()
        self._conn.close()
        if not self._keep_log and (proc.returncode == 0 or stopped):
            self._remove_log()  # else it says what went wrong

    def __enter__(self) -> IsolatedRayEvaluator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _raise_error(self, kind: str, value: Any) -> None:
        if kind == "error":  # an einc error, as the in-process evaluator raises it
            raise value
        if kind == "crash":  # anything else: its traceback is in the log
            self._keep_log = True
            raise EvaluatorError(f"error: the Ray driver process failed: {value}; its log: {self.log}")

    def _remove_log(self) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self.log)

    def _send(self, message: tuple[str, Any]) -> None:
        try:
            self._conn.send(message)
        except OSError:  # EPIPE: the driver is gone
            raise self._gone() from None

    def _recv(self) -> tuple[str, Any]:
        try:
            return self._conn.recv()
        except (EOFError, OSError):
            raise self._gone() from None

    def _gone(self) -> ClusterLost:
        """The driver process died: why, as far as its exit and its log tell."""
        try:
            code = self._proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:  # it closed the pipe yet lives on: make sure it is gone
            self._proc.kill()
            code = self._proc.wait()
        if code < 0:
            try:
                how = f"was killed by {signal.Signals(-code).name}"
            except ValueError:
                how = f"was killed by signal {-code}"
        else:
            how = f"exited with code {code}"
        tail = _tail(self.log)
        if not self._ready:  # e.g. an import failed: its last line says what
            last = next((line.strip() for line in reversed(tail.splitlines()) if line.strip()), "no output")
            self._lost = ClusterLost(f"error: the Ray driver process {how} as it started ({last[:300]}); "
                                     f"its log: {self.log}", None)
        else:
            why = ("the cluster's head (GCS) stopped answering" if "connect to GCS" in tail
                   else "as Ray does when the raylet on this machine or the cluster's head dies")
            self._lost = ClusterLost(f"error: lost the Ray cluster: the search's Ray driver process {how} ({why}); "
                                     f"Ray's log: {self.log}", self.resume)
        self._closed = self._keep_log = True
        self._pending = 0
        return self._lost


def _ray_installed() -> bool:
    try:
        return importlib.util.find_spec("ray") is not None
    except (ImportError, ValueError):  # sys.modules["ray"] is None or has no spec
        return False


def _tail(path: str, size: int = 20000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - size))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _serve(fd: int, parent: int) -> None:
    """The driver process of ``IsolatedRayEvaluator``: one ``RayEvaluator``, driven over connection ``fd``.

    Messages in: ("start", settings), ("submit", job), ("next", None), ("close", None). Replies:
    ("ready", (gpus, cpus, threads)) to start; ("outcome", (outcome or None, resubmitted)) to next;
    ("error", EvaluatorError) or ("crash", one line) to either. SIGTERM (also when the search process
    dies) stops a wait.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the search's; it then closes us

    def stop(signum, frame):
        raise SystemExit(1)

    signal.signal(signal.SIGTERM, stop)
    with contextlib.suppress(Exception):  # not Linux: the search's close() and the broken pipe cover it
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        return
    conn = Connection(fd)
    ev: RayEvaluator | None = None
    try:
        _, settings = conn.recv()
        try:
            ev = RayEvaluator(**settings)
        except Exception as e:
            conn.send(_error(e))
            return
        conn.send(("ready", (ev.gpus_per_eval, ev.cpus_per_eval, ev.threads)))
        while True:
            kind, value = conn.recv()
            if kind == "close":
                return
            try:
                if kind == "submit":
                    ev.submit(value)  # its failures are outcomes, or show at the next "next"
                    continue
                reply: tuple[str, Any] = ("outcome", (next(ev.results(), None), ev.resubmitted))
            except Exception as e:
                reply = _error(e)
            conn.send(reply)
    except (EOFError, OSError):  # the search went away
        return
    finally:
        if ev is not None:
            ev.close()


def _error(e: Exception) -> tuple[str, Any]:
    """The reply for ``e``: an einc error crosses as is; anything else as one line, its traceback to our log."""
    if isinstance(e, EvaluatorError):
        return "error", e
    traceback.print_exc()
    return "crash", one_line(e)


def resume_command(out, address: str | None, gpus_per_eval: float | None = None, retries: int = 1) -> str:
    """The ``einc search`` command that continues the search in ``out`` with the same Ray settings (not saved)."""
    import shlex

    words = ["einc", "search", "--out", shlex.quote(str(out)), "--resume", "--ray"]
    if address not in (None, "local"):
        words.append(shlex.quote(str(address)))
    if gpus_per_eval is not None:
        words += ["--gpus-per-eval", f"{gpus_per_eval:g}"]
    if retries != 1:
        words += ["--retries", str(retries)]
    return " ".join(words)


def search_evaluator(config, out, resume: bool, address: str, gpus_per_eval: float | None = None,
                     retries: int = 1) -> RayEvaluator | IsolatedRayEvaluator:
    """The evaluator of ``einc search --ray``: sized by the search's settings (the saved ones on resume).

    Ray settings are execution settings, not the search's: they are not saved and are given
    again with ``--resume``; a lost cluster's ``ClusterLost`` ends with that command. The Ray
    driver runs in a child process (``IsolatedRayEvaluator``), unless this process has a Ray
    runtime initialised already (tests, notebooks): that one is used in-process, as is.
    """
    from pathlib import Path

    from .search import SearchConfig

    saved = Path(out) / "config.json"
    if resume and saved.exists():
        config = SearchConfig.load(saved)
    ray = sys.modules.get("ray")
    kind = RayEvaluator if ray is not None and ray.is_initialized() else IsolatedRayEvaluator
    return kind(config.workers, address=address, gpus_per_eval=gpus_per_eval, retries=retries,
                time_limit=config.time_limit, resume=resume_command(out, address, gpus_per_eval, retries))
