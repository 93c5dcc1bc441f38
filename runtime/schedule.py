"""Steady-state scheduling: a new proposal the moment a worker is free, every event journaled in order.

A search is a sequence of two kinds of event, each one journal line written before the search
moves on:

* ``proposal``: the strategy proposed architecture ``arch`` as number ``index``;
* ``eval``: the evaluation of ``index`` finished (or was reused: ``duplicate_of``).

Observations reach the strategy in the order their ``eval`` lines stand in the journal, and a
strategy's proposals depend only on its seed and on that order. Resuming therefore replays
the journal through the same state machine (``Scheduler.replay``): every replayed proposal must
equal its line, finished evaluations are observed again, and what was in flight at the kill is
submitted again; nothing finished is trained twice and the journal only grows. With one worker
the events alternate, so a resumed search writes exactly the journal of an uninterrupted one.

``budget`` counts trainings. A proposal that repeats an architecture already proposed is not
trained: its ``eval`` line copies the first one's result once that is known, and it costs no
budget (strategies redraw such proposals a bounded number of times first).

Multi-fidelity (``rungs=(1, 3, 9), eta=3``) is asynchronous successive halving: every new
architecture trains for ``rungs[0]`` epochs; whenever a worker is free, an evaluation in the
best ``1/eta`` of the finished ones at its rung is promoted first (a ``proposal`` with origin
``promotion``, trained from scratch for the next rung's epochs: the cosine schedule depends on
the total, so continuing would not give the same network), else the strategy proposes. A
candidate's score is ``rung + accuracy``, so any score from a higher rung beats every score from
a lower one and scores within a rung compare as accuracies; a promoted candidate competes in
evolution's tournaments with its newest score (``Strategy.rescore``). Promotions count
against the budget like any training.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from einc.errors import EinError
from einc.notation import show
from einc.tree import Expansion

from .journal import Journal
from .strategies import Avoid, Proposal
from .workers import Evaluator, Job, Outcome

MAX_REPEATS = 1000
"""Consecutive proposals that all repeat earlier ones before the search decides its space is exhausted."""


class ReplayError(EinError):
    """The journal does not replay: it belongs to another search."""


class Strategy(Protocol):
    def ready(self) -> bool: ...

    def propose(self, avoid: Avoid) -> Proposal: ...

    def observe(self, index: int, tree: Expansion, fitness: float | None) -> None: ...

    def rescore(self, index: int, fitness: float | None) -> None: ...


def fitness(record: dict[str, Any]) -> float | None:
    """Validation accuracy, or None for a failed evaluation."""
    return record.get("metrics", {}).get("val_acc") if record.get("status") == "ok" else None


def score(record: dict[str, Any]) -> float | None:
    """What a strategy is told and what picks the best: ``rung + accuracy`` (rung 0 without multi-fidelity)."""
    acc = fitness(record)
    return None if acc is None else record.get("rung", 0) + acc


def best(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The evaluation with the highest score (the highest rung first), earliest on ties."""
    ok = [r for r in records if r.get("kind", "eval") == "eval" and score(r) is not None]
    return max(ok, key=lambda r: (score(r), -r["index"])) if ok else None


class Scheduler:
    """Keeps ``workers`` evaluations in flight until ``budget`` trainings are journaled.

    ``job_for(index, tree, text, epochs)`` makes the evaluation job of an architecture and
    ``describe(tree)`` the static facts journaled with it (params, FLOPs). ``base`` keys go
    into every line (grammar hash, seed, strategy). ``rungs`` (epochs per rung) and ``eta``
    turn on multi-fidelity; with one rung every evaluation trains for ``rungs[0]`` epochs.
    """

    def __init__(self, strategy: Strategy, journal: Journal, *, budget: int, workers: int,
                 job_for: Callable[[int, Expansion, str, int], Job],
                 describe: Callable[[Expansion], dict[str, Any]], base: dict[str, Any],
                 on_event: Callable[[Scheduler], None] | None = None, max_repeats: int = MAX_REPEATS,
                 rungs: tuple[int, ...] = (1,), eta: int = 3):
        if not rungs or eta < 2:
            raise ValueError("multi-fidelity needs at least one rung and eta >= 2")
        self.rungs, self.eta = tuple(rungs), eta
        self.promoted: set[int] = set()               # evaluations already promoted to the next rung
        self.root: dict[int, int] = {}                # promotion -> the index that first proposed its arch
        self.strategy, self.journal, self.max_repeats = strategy, journal, max_repeats
        self.budget, self.workers = budget, workers
        self.job_for, self.describe, self.base, self.on_event = job_for, describe, base, on_event
        self.proposals: dict[int, dict[str, Any]] = {}
        self.trees: dict[int, Expansion] = {}
        self.results: dict[int, dict[str, Any]] = {}
        self.first: dict[str, int] = {}               # architecture -> the proposal that trains it
        self.waiting: dict[int, list[int]] = {}       # trained index -> repeats awaiting its result
        self.running: set[int] = set()
        self.trainings = 0                            # proposals that train (finished or not)
        self.repeats = 0                              # consecutive proposals that repeated earlier ones
        self.exhausted = False
        self.notes: list[str] = []                 # what the summary should say about this run

    # ------------------------------------------------------------------ the two events

    def _promotion(self) -> int | None:
        """An evaluation in the best 1/eta of its rung and not yet promoted (highest rung first), if any."""
        for rung in range(len(self.rungs) - 2, -1, -1):
            done = [r for r in self.results.values()
                    if r.get("rung", 0) == rung and "duplicate_of" not in r]
            ok = sorted(((r, f) for r in done if (f := fitness(r)) is not None), key=lambda t: (-t[1], t[0]["index"]))
            for r, _ in ok[:len(done) // self.eta]:
                if r["index"] not in self.promoted:
                    return r["index"]
        return None

    def _propose(self) -> dict[str, Any]:
        index = len(self.proposals)
        lower = self._promotion()
        if lower is not None:
            below = self.results[lower]
            self.promoted.add(lower)
            rung = below.get("rung", 0) + 1
            record = {"index": index, "kind": "proposal", "arch": below["arch"], "origin": "promotion",
                      "parent": lower, "retries": 0, "rung": rung, "epochs": self.rungs[rung]}
            self.root[index] = self.root.get(lower, lower)
            self.trainings += 1
            self.repeats = 0
            self.proposals[index], self.trees[index] = record, self.trees[lower]
            return record
        p = self.strategy.propose(lambda tree: show(tree) in self.first)
        text = show(p.tree)
        record = {"index": index, "kind": "proposal", "arch": text, "origin": p.origin, "parent": p.parent,
                  "retries": p.retries}
        if len(self.rungs) > 1:
            record.update(rung=0, epochs=self.rungs[0])
        if text in self.first:
            record["duplicate_of"] = self.first[text]
            self.repeats += 1
        else:
            self.first[text] = index
            self.trainings += 1
            self.repeats = 0
        self.proposals[index], self.trees[index] = record, p.tree
        return record

    def _observe(self, record: dict[str, Any]) -> None:
        index = record["index"]
        self.results[index] = record
        if index in self.root:
            self.strategy.rescore(self.root[index], score(record))
        else:
            self.strategy.observe(index, self.trees[index], score(record))

    # ------------------------------------------------------------------ live

    def run(self, evaluator: Evaluator) -> None:
        """Propose, submit and journal until the budget is trained; returns when nothing is in flight."""
        self._fill(evaluator)
        for outcome in evaluator.results():
            self._finish(outcome)
            self._fill(evaluator)

    def resubmit(self, evaluator: Evaluator) -> None:
        """After ``replay``: submit again what was in flight when the search stopped."""
        for index in sorted(self.proposals):
            record = self.proposals[index]
            if index in self.results or "duplicate_of" in record:
                continue
            self._submit(evaluator, index)

    def _fill(self, evaluator: Evaluator) -> None:
        while (len(self.running) < self.workers and self.trainings < self.budget and not self.exhausted
               and (self.strategy.ready() or self._promotion() is not None)):
            record = self._propose()
            self.journal.append(record)
            original = record.get("duplicate_of")
            if original is None:
                self._submit(evaluator, record["index"])
            elif original in self.results:
                self._reuse(record["index"], self.results[original])
            else:
                self.waiting.setdefault(original, []).append(record["index"])
            if self.repeats >= self.max_repeats:
                self.exhausted = True
                self.notes.append(f"stopped early: the last {self.max_repeats} proposals all repeated "
                                         "architectures already evaluated (the space is exhausted)")

    def _submit(self, evaluator: Evaluator, index: int) -> None:
        self.running.add(index)
        p = self.proposals[index]
        evaluator.submit(self.job_for(index, self.trees[index], p["arch"], p.get("epochs", self.rungs[0])))

    def _finish(self, outcome: Outcome) -> None:
        index = int(outcome.key)
        self.running.discard(index)
        result = outcome.result or {}
        p = self.proposals[index]
        record = dict(index=index, kind="eval", arch=p["arch"], **self.base, origin=p["origin"],
                      parent=p["parent"], **self._fidelity(p), **self.describe(self.trees[index]),
                      status=outcome.status,
                      reason=outcome.reason, metrics=result.get("metrics", {}), seconds=round(outcome.seconds, 3),
                      timing={k: round(v, 3) for k, v in result.get("timing", {}).items()},
                      started=round(outcome.started, 3), finished=round(outcome.finished, 3),
                      worker=outcome.worker)
        self.journal.append(record)
        self._observe(record)
        self._emit()
        for j in self.waiting.pop(index, []):
            self._reuse(j, record)

    def _reuse(self, index: int, original: dict[str, Any]) -> None:
        p = self.proposals[index]
        now = round(time.time(), 3)
        record = dict(index=index, kind="eval", arch=p["arch"], **self.base, origin=p["origin"], parent=p["parent"],
                      **self._fidelity(p), params=original.get("params"), flops=original.get("flops"),
                      activations=original.get("activations"), status=original["status"],
                      reason=original.get("reason"), metrics=original.get("metrics", {}), seconds=0.0,
                      started=now, finished=now, worker=None, duplicate_of=original["index"])
        self.journal.append(record)
        self._observe(record)
        self._emit()

    @staticmethod
    def _fidelity(proposal: dict[str, Any]) -> dict[str, Any]:
        return {k: proposal[k] for k in ("rung", "epochs") if k in proposal}

    def _emit(self) -> None:
        if self.on_event is not None:
            self.on_event(self)

    # ------------------------------------------------------------------ resume

    def replay(self, records: Iterable[dict[str, Any]]) -> None:
        """Bring strategy and state to where the journal ends, checking every proposal against it."""
        for r in records:
            kind = r.get("kind", "eval")
            if kind == "proposal":
                self._replay_proposal(r)
            elif kind == "eval":
                index = r.get("index")
                if index not in self.proposals:  # written by an einc that journaled no proposals
                    self._replay_proposal(r)
                if index in self.results:
                    raise ReplayError(f"record {index} is evaluated twice; the journal was edited or merged")
                self._observe(r)
        for index in sorted(self.proposals):  # repeats whose original finished just before the stop
            original = self.proposals[index].get("duplicate_of")
            if index in self.results or original is None:
                continue
            if original in self.results:
                self._reuse(index, self.results[original])
            else:
                self.waiting.setdefault(original, []).append(index)

    def _replay_proposal(self, r: dict[str, Any]) -> None:
        if not (self.strategy.ready() or self._promotion() is not None):
            raise ReplayError(f"record {r.get('index')}: this search could not have proposed it yet; "
                              "the journal belongs to another search")
        record = self._propose()
        if (r.get("index"), r.get("arch")) != (record["index"], record["arch"]):
            raise ReplayError(f"record {r.get('index')} holds a different architecture than this search "
                              "proposes; the journal belongs to another search (other seed, strategy or settings)")

    @property
    def finished_trainings(self) -> int:
        return sum(1 for i in self.results if "duplicate_of" not in self.results[i])

    def evaluations(self) -> list[dict[str, Any]]:
        return [self.results[i] for i in sorted(self.results)]
