"""Shared fixtures: a fake evaluator for search logic (no training), Hypothesis profiles."""

from __future__ import annotations

import heapq
import os
import sys
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from einc.runtime.journal import Journal
from einc.runtime.workers import Job, Outcome

# One torch thread per process, in the test processes (torch is not imported yet: it reads this
# when it is) and in every search worker they start (einc caps workers' threads by it). pytest-xdist
# runs one test process per core already; a second thread per process only makes OpenMP spin-wait
# against the neighbour: up to 100x on many small forward passes, 4x on two real searches side by
# side (both measured on two cores). No test changes the setting.
os.environ["OMP_NUM_THREADS"] = "1"
if "torch" in sys.modules:  # imported by a plugin before this file: it has read the variable already
    sys.modules["torch"].set_num_threads(1)

# "ci" (the default) keeps property tests to a budget that fits the suite's time;
# HYPOTHESIS_PROFILE=dev digs four times deeper, fuzzers included (see ``examples``).
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
settings.register_profile("ci", max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=160, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(PROFILE)


def examples(dev: int) -> int:
    """A test's example count: ``dev`` under the dev profile, a quarter of it in CI."""
    return dev if PROFILE == "dev" else max(10, dev // 4)


# Small networks, one epoch, the 10-class digits: a few seconds per real search.
TINY = dict(data="digits10", budget=6, epochs=1, batch_size=64, max_params=100_000, max_flops=5_000_000,
            max_activations=200_000, seed=3)


def evals(out: Path) -> list[dict]:
    """The evaluation records of the search journaled in folder ``out``."""
    return [r for r in Journal(out / "journal.jsonl").records() if r["kind"] == "eval"]


def fake_accuracy(arch: str) -> float:
    """A deterministic stand-in for training: a fixed pseudo-random accuracy per architecture."""
    return (zlib.crc32(arch.encode()) % 1000) / 1000


class FakeEvaluator:
    """``workers`` simulated workers on a virtual clock; a job's duration is ``duration(arch)`` seconds.

    Jobs are not run: an evaluation scores ``fake_accuracy(arch)`` (or fails where ``fails(arch)``),
    a final test scores the same. Outcomes come in order of virtual finish time, as real workers
    would deliver them, so scheduling logic is tested exactly and in milliseconds.
    """

    def __init__(self, workers: int = 1, duration: Callable[[str], float] = lambda arch: 1.0,
                 fails: Callable[[str], bool] = lambda arch: False):
        self.duration, self.fails = duration, fails
        self.origin = time.time()
        self.clock = 0.0
        self.free = [str(i) for i in range(workers)]
        self.queue: deque[Job] = deque()
        self.running: list[tuple[float, int, str, float, Job]] = []
        self.submitted: list[Job] = []
        self.closed = False
        self._seq = 0

    def submit(self, job: Job) -> None:
        self.submitted.append(job)
        self.queue.append(job)
        self._dispatch()

    def _dispatch(self) -> None:
        while self.free and self.queue:
            job = self.queue.popleft()
            worker = self.free.pop(0)
            self._seq += 1
            heapq.heappush(self.running, (self.clock + self.duration(job.kwargs["arch"]), self._seq, worker,
                                          self.clock, job))

    def results(self) -> Iterator[Outcome]:
        while self.running or self.queue:
            self._dispatch()
            finish, _, worker, start, job = heapq.heappop(self.running)
            self.clock = finish
            self.free.append(worker)
            self.free.sort()
            arch = job.kwargs["arch"]
            if self.fails(arch):
                result, status, reason = None, "failed", "TrainError: fake failure"
            else:
                key = "test_acc" if job.fn.__name__ == "final_test" else "val_acc"
                result = {"metrics": {key: fake_accuracy(arch), "epochs": 1},
                          "timing": {"build": 0.0, "train": finish - start}}
                status, reason = "ok", None
            yield Outcome(job.key, status, result, reason, finish - start, None, self.origin + start,
                          self.origin + finish, worker)

    @property
    def pending(self) -> int:
        return len(self.queue) + len(self.running)

    def close(self) -> None:
        self.closed = True


def pytest_configure(config: pytest.Config) -> None:
    # pytest-xdist's --dist loadfile orders files by test count unless told not to; the order of
    # pytest_collection_modifyitems below is the better one (a file of five real searches outlasts
    # one of a hundred unit tests)
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked ``slow`` first, and with them their files (pytest-xdist hands out whole
    files), the rest in their usual order: the workers then share out the short files at the
    end, and no long file starts last."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture
def fake_evaluator() -> type[FakeEvaluator]:
    return FakeEvaluator
