"""Steady-state scheduling: a new proposal the moment a worker is free, every event journaled in order.

A search is a sequence of two kinds of event, each one journal line written before the search
moves on:

* ``proposal``: the strategy proposed architecture ``arch`` as number ``index``;
* ``eval``: the evaluation of ``index`` finished (or was reused: ``duplicate_of``).

**Determinism.** Workers finish in an order that depends on timing, so a strategy that learned
results in that order would search differently on every run. Here it never does: results reach
the strategy, and the journal, in *proposal order*, and proposal ``k`` is made from exactly the
results of proposals ``< k - lag`` (or a few more, when the strategy cannot propose yet: still a
fixed number). Both depend only on the seed, not on ``workers`` or on timing, so the same seed
gives the same journal (timestamps and worker names aside) with one worker or sixty-four, local
or on Ray. ``lag`` bounds how many proposals may be in flight ahead of the oldest unfinished
one (``lag + 1`` trainings at once); a worker waits only when the oldest evaluation in flight
is that far behind. A result that finished out of order waits in ``<journal>.pending`` (fsync'd
like the journal) until its turn, so a killed search loses no finished evaluation either.

Resuming replays the journal through the same state machine (``Scheduler.replay``): every
replayed proposal must equal its line, results are observed again in the same order, pending
results are taken back, and what was in flight at the kill is submitted again; nothing finished
is trained twice, the journal only grows, and a resumed search writes exactly the journal of an
uninterrupted one.

``budget`` counts trainings. A proposal that repeats a network already proposed (the same key, einc.key) is not
trained: its ``eval`` line copies the first one's result, and it costs no budget (strategies
redraw such proposals a bounded number of times first). When ``max_repeats`` proposals in a
row all repeat, the space (under its budgets) holds no more: the search ends early and says so.

Multi-fidelity (``rungs=(1, 3, 9), eta=3``) is asynchronous successive halving: every new
architecture trains for ``rungs[0]`` epochs; whenever a worker is free, an evaluation in the
best ``1/eta`` of the finished ones at its rung is promoted first (a ``proposal`` with origin
``promotion``, trained from scratch for the next rung's epochs: the cosine schedule depends on
the total, so continuing would not give the same network), else the strategy proposes. A
candidate's score is ``(rung, fitness)`` (runtime/goal.py), so any score from a higher rung beats
every score from a lower one and scores within a rung compare by the search's metric; a promoted candidate competes in
evolution's tournaments with its newest score (``Strategy.rescore``). Promotions count
against the budget like any training.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from einc.errors import EinError
from einc.key import key
from einc.notation import show
from einc.tree import Expansion

from .goal import ACCURACY, Goal, Score
from .journal import Journal
from .strategies import Avoid, Proposal
from .workers import Evaluator, Job, Outcome

MAX_REPEATS = 20
"""Consecutive proposals that all repeat earlier ones before the search decides its space is exhausted
(each proposal has already redrawn ``strategies.RETRIES`` times, so 20 is some 400 draws)."""

LAG = 8
"""Default lag: proposal k sees the results of proposals < k - LAG. Simulated with lognormal training
times (sigma 0.7), workers stay >= 93% busy up to about LAG / 2 of them; more want a larger lag."""


class ReplayError(EinError):
    """The journal does not replay: it belongs to another search."""


class Strategy(Protocol):
    def ready(self) -> bool: ...

    def propose(self, avoid: Avoid) -> Proposal: ...

    def observe(self, index: int, tree: Expansion, score: Score | None) -> None: ...

    def rescore(self, index: int, score: Score | None) -> None: ...


def outcome_fields(outcome: Outcome) -> dict[str, Any]:
    """What an evaluation gave, as journal fields (times rounded to the millisecond)."""
    result = outcome.result or {}
    return dict(status=outcome.status, reason=outcome.reason, metrics=result.get("metrics", {}),
                seconds=round(outcome.seconds, 3),
                timing={k: round(v, 3) for k, v in result.get("timing", {}).items()},
                started=round(outcome.started, 3), finished=round(outcome.finished, 3), worker=outcome.worker)


def fitness(record: dict[str, Any]) -> float | None:
    """Validation accuracy, or None for a failed evaluation (the default goal's value)."""
    return ACCURACY.value(record)


def best(records: list[dict[str, Any]], goal: Goal = ACCURACY) -> dict[str, Any] | None:
    """The evaluation with the highest score (the highest rung first), earliest on ties."""
    return goal.best(records)


class Scheduler:
    """Keeps ``workers`` evaluations in flight until ``budget`` trainings are journaled.

    ``job_for(index, tree, text, epochs)`` makes the evaluation job of an architecture and
    ``describe(tree)`` the static facts journaled with it (params, FLOPs). ``base`` keys go
    into every line (grammar hash, seed, strategy). ``rungs`` (epochs per rung) and ``eta``
    turn on multi-fidelity; with one rung every evaluation trains for ``rungs[0]`` epochs.
    ``goal`` ranks evaluations (runtime/goal.py). ``lag`` is the determinism window of the
    module docstring: part of what a search is, unlike ``workers``.
    """

    def __init__(self, strategy: Strategy, journal: Journal, *, budget: int, workers: int,
                 job_for: Callable[[int, Expansion, str, int], Job],
                 describe: Callable[[Expansion], dict[str, Any]], base: dict[str, Any],
                 on_event: Callable[[Scheduler], None] | None = None, max_repeats: int = MAX_REPEATS,
                 rungs: tuple[int, ...] = (1,), eta: int = 3, lag: int = LAG, goal: Goal = ACCURACY):
        if not rungs or eta < 2 or lag < 0:
            raise ValueError("multi-fidelity needs at least one rung and eta >= 2; lag must be >= 0")
        self.rungs, self.eta, self.lag, self.goal = tuple(rungs), eta, lag, goal
        self.promoted: set[int] = set()               # evaluations already promoted to the next rung
        self.root: dict[int, int] = {}                # promotion -> the index that first proposed its arch
        self.strategy, self.journal, self.max_repeats = strategy, journal, max_repeats
        self.pending = Journal(journal.path.with_name(journal.path.name + ".pending"))
        self.budget, self.workers = budget, workers
        self.job_for, self.describe, self.base, self.on_event = job_for, describe, base, on_event
        self.proposals: dict[int, dict[str, Any]] = {}
        self.trees: dict[int, Expansion] = {}
        self.results: dict[int, dict[str, Any]] = {}  # journaled and observed: indices < self.committed
        self.finished: dict[int, dict[str, Any]] = {}  # trained, waiting for their turn (in self.pending)
        self.committed = 0
        self.first: dict[str, int] = {}               # network key (einc.key) -> the proposal that trains it
        self.running: set[int] = set()
        self.trainings = 0                            # proposals that train (finished or not)
        self.repeats = 0                              # consecutive proposals that repeated earlier ones
        self.exhausted = False
        self.notes: list[str] = []                    # what the summary should say about this run

    # ------------------------------------------------------------------ decisions (no I/O)

    def _promotion(self) -> int | None:
        """An evaluation in the best 1/eta of its rung and not yet promoted (highest rung first), if any."""
        for rung in range(len(self.rungs) - 2, -1, -1):
            done = [r for r in self.results.values()
                    if r.get("rung", 0) == rung and "duplicate_of" not in r]
            ok = sorted(((r, f) for r in done if (f := self.goal.fitness(r)) is not None),
                        key=lambda t: (-t[1], t[0]["index"]))
            for r, _ in ok[:len(done) // self.eta]:
                if r["index"] not in self.promoted:
                    return r["index"]
        return None

    def _can_propose(self) -> bool:
        return self.strategy.ready() or self._promotion() is not None

    def proposing(self) -> bool:
        """Whether the search still makes proposals (budget left, space not exhausted)."""
        return self.trainings < self.budget and not self.exhausted

    def _wants_result(self, k: int) -> bool:
        """Before proposal ``k``: must the next result in proposal order be observed first?"""
        return self.committed < k and (self.committed < k - self.lag or not self._can_propose())

    def _committable(self, i: int) -> bool:
        return i < len(self.proposals) and (i in self.finished or "duplicate_of" in self.proposals[i])

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
        p = self.strategy.propose(lambda tree: key(tree) in self.first)
        text, net = show(p.tree), key(p.tree)
        record = {"index": index, "kind": "proposal", "arch": text, "origin": p.origin, "parent": p.parent,
                  "retries": p.retries}
        if len(self.rungs) > 1:
            record.update(rung=0, epochs=self.rungs[0])
        if net in self.first:
            record["duplicate_of"] = self.first[net]
            self.repeats += 1
        else:
            self.first[net] = index
            self.trainings += 1
            self.repeats = 0
        self.proposals[index], self.trees[index] = record, p.tree
        if self.repeats >= self.max_repeats:
            self.exhausted = True
            found = f"{len(self.first)} distinct architecture" + ("s" if len(self.first) > 1 else "")
            self.notes.append(f"stopped early: the space looks exhausted: {found} found, then "
                              f"{self.max_repeats} proposals in a row repeated them; the "
                              "grammar, within its budgets (--max-params, --max-flops, ...), seems to hold no more")
        return record

    def _observe(self, record: dict[str, Any]) -> None:
        index = record["index"]
        self.results[index] = record
        self.committed = index + 1
        if index in self.root:
            self.strategy.rescore(self.root[index], self.goal.score(record))
        else:
            self.strategy.observe(index, self.trees[index], self.goal.score(record))

    def _result_of(self, index: int) -> dict[str, Any]:
        """The eval record of a committable ``index``: its training's, or a copy of its original's."""
        if index in self.finished:
            return self.finished.pop(index)
        p = self.proposals[index]
        original = self.results[p["duplicate_of"]]
        now = time.time()
        reuse = Outcome(str(index), original["status"], {"metrics": original.get("metrics", {})},
                        original.get("reason"), 0.0, None, now, now, None)
        costs = {k: original.get(k) for k in ("params", "flops", "activations")}
        return self._record(p, reuse, costs, duplicate_of=original["index"])

    def _record(self, p: dict[str, Any], outcome: Outcome, costs: dict[str, Any], **extra: Any) -> dict[str, Any]:
        """The one shape of an eval line: proposal, static costs, then what its evaluation gave."""
        return dict(index=p["index"], kind="eval", arch=p["arch"], **self.base, origin=p["origin"],
                    parent=p["parent"], **self._fidelity(p), **costs, **outcome_fields(outcome), **extra)

    # ------------------------------------------------------------------ live

    def run(self, evaluator: Evaluator) -> None:
        """Propose, submit and journal until the budget is trained; returns when nothing is in flight."""
        self.advance(evaluator)
        for outcome in evaluator.results():
            self.deliver(outcome)
            self.advance(evaluator)

    def resubmit(self, evaluator: Evaluator) -> None:
        """After ``replay``: submit again what was in flight when the search stopped."""
        for index in sorted(self.proposals):
            if index < self.committed or index in self.finished or "duplicate_of" in self.proposals[index]:
                continue
            self._submit(evaluator, index)

    def advance(self, evaluator: Evaluator) -> None:
        """Commit the results whose turn has come and propose while a worker is free."""
        while self.proposing() and len(self.running) < self.workers:
            k = len(self.proposals)
            while self._wants_result(k):
                if not self._committable(self.committed):
                    return  # the next result in proposal order is still training
                self._commit(self._result_of(self.committed))
            if not self._can_propose():
                return
            record = self._propose()
            self.journal.append(record)
            if "duplicate_of" not in record:
                self._submit(evaluator, record["index"])
        if not self.proposing():  # the rest enter the journal as their turn comes
            while self._committable(self.committed):
                self._commit(self._result_of(self.committed))
            if self.committed == len(self.proposals) and self.pending.path.exists():
                self.pending.path.unlink()  # every pending result is in the journal now

    def _commit(self, record: dict[str, Any]) -> None:
        self.journal.append(record)
        self._observe(record)
        self._emit()

    def _submit(self, evaluator: Evaluator, index: int) -> None:
        self.running.add(index)
        p = self.proposals[index]
        evaluator.submit(self.job_for(index, self.trees[index], p["arch"], p.get("epochs", self.rungs[0])))

    def deliver(self, outcome: Outcome) -> None:
        """Take a finished evaluation (from an evaluator, or a Study's tell); it is journaled in its turn."""
        index = int(outcome.key)
        self.running.discard(index)
        record = self._record(self.proposals[index], outcome, self.describe(self.trees[index]))
        self.pending.append(record)  # on disk before anything else: a kill now loses nothing
        self.finished[index] = record
        self._emit()

    @staticmethod
    def _fidelity(proposal: dict[str, Any]) -> dict[str, Any]:
        return {k: proposal[k] for k in ("rung", "epochs") if k in proposal}

    def _emit(self) -> None:
        if self.on_event is not None:
            self.on_event(self)

    # ------------------------------------------------------------------ resume

    def replay(self, records: Iterable[dict[str, Any]], pending: Iterable[dict[str, Any]] = ()) -> None:
        """Bring strategy and state to where the journal ends, checking every line against the live rules.

        ``pending``: the records of ``<journal>.pending`` (finished, not yet in the journal).
        """
        results: deque[dict[str, Any]] = deque()  # eval lines read, not yet observed
        for r in records:
            kind = r.get("kind", "eval")
            if kind == "eval":
                results.append(r)
            elif kind == "proposal":
                k = r.get("index")
                while self._wants_result(len(self.proposals)):
                    if not results:
                        raise ReplayError(f"record {k}: proposed before the result of {self.committed} was "
                                          "known; the journal belongs to another search (other --lag?)")
                    self._replay_result(results.popleft())
                if results:
                    raise ReplayError(f"record {results[0].get('index')}: a result journaled earlier than this "
                                      "search observes it; the journal belongs to another search (other --lag?)")
                self._replay_proposal(r)
        while results:  # results journaled after the last proposal (the search was ending, or stopped)
            self._replay_result(results.popleft())
        for r in pending:
            index = r.get("index")
            if isinstance(index, int) and self.committed <= index < len(self.proposals) \
                    and "duplicate_of" not in self.proposals[index]:
                if r.get("arch") != self.proposals[index]["arch"]:
                    raise ReplayError(f"pending record {index} holds a different architecture than its proposal")
                self.finished[index] = r

    def _replay_result(self, r: dict[str, Any]) -> None:
        index = r.get("index")
        if index != self.committed or index >= len(self.proposals):
            where = "is evaluated twice" if isinstance(index, int) and index < self.committed else "is out of order"
            raise ReplayError(f"record {index} {where}; the journal was edited, merged, or written by an "
                              "einc that journaled results in the order they finished")
        if r.get("arch") != self.proposals[index]["arch"] or \
                r.get("duplicate_of") != self.proposals[index].get("duplicate_of"):
            raise ReplayError(f"record {index}: its result does not match its proposal; the journal was edited")
        self._observe(r)

    def _replay_proposal(self, r: dict[str, Any]) -> None:
        if not self._can_propose():
            raise ReplayError(f"record {r.get('index')}: this search could not have proposed it yet; "
                              "the journal belongs to another search")
        record = self._propose()
        if (r.get("index"), r.get("arch")) != (record["index"], record["arch"]):
            raise ReplayError(f"record {r.get('index')} holds a different architecture than this search "
                              "proposes; the journal belongs to another search (other seed, strategy or settings)")

    @property
    def finished_trainings(self) -> int:
        return sum(1 for r in self.results.values() if "duplicate_of" not in r) + len(self.finished)

    def known(self) -> list[dict[str, Any]]:
        """Every result so far, journaled or pending (for progress: the journal's order is the strategy's)."""
        return [*self.results.values(), *self.finished.values()]

    def evaluations(self) -> list[dict[str, Any]]:
        return [self.results[i] for i in sorted(self.results)]
