"""einc's Python search API, in the conventions of Optuna and NePS: ``einc.search`` and ``einc.Study``.

    >>> import einc
    >>> def objective(arch, ctx):                     # arch: einc.Architecture, ctx: einc.Context
    ...     return -arch.infer(ctx.input_shape).params
    >>> result = einc.search(objective, input_shape=(3, 8, 8), strategy="rs", budget=4, max_params=100_000)
    >>> result.best.score <= 0 and len(result.trials) == 4
    True

    >>> study = einc.Study(input_shape=(3, 8, 8), strategy="rs", max_params=100_000)
    >>> trial = study.ask()                            # trial.arch: an einc.Architecture
    >>> _ = study.tell(trial, -trial.arch.infer((3, 8, 8)).params)
    >>> study.best.index
    0

``einc.search`` runs ``objective(arch, ctx)`` in worker processes (``workers``; or a Ray
``evaluator``), with the isolation of any search (runtime/workers.py): an exception, a non-finite
or missing score is a failed evaluation with its reason. The function is shipped to the workers
by value with cloudpickle (runtime/objective.py), so one defined in ``__main__`` or a notebook
cell works with several workers. ``einc search --objective`` is this same path (``run_search``).

``einc.Study`` is ask-and-tell over the search's own state machine (runtime/schedule.py's
``Scheduler``): ``ask()`` proposes, ``tell()`` delivers the result as a worker would, and with
``out`` the folder holds the same config.json and journal a search writes, so a Study made again
on that folder resumes by replaying it (a trial asked but never told is asked again first).

Determinism decides what ``ask()`` may do. Proposal ``k`` is made from exactly the results of
proposals before ``k - lag``, in proposal order (runtime/schedule.py), so the same seed and the
same told values give the same trials in any order of telling. Hence at most ``lag + 1`` trials
(default 9) can be open at once: an ``ask()`` that would need an untold result raises
``StudyError`` naming the trial to tell first (never blocks: with one thread, nothing else could
tell it). Regularised evolution also needs one result of its initial population before it mutates.

Both take a search space's usual settings: ``population``, ``tournament``, ``lag``, ``epochs``
(``ctx.epochs``), ``plugins`` and the budgets ``max_params``, ``max_flops``, ``max_activations``,
``max_nodes``, ``max_depth`` as ``**limits``. Scores are maximised unless ``minimize=True``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from einc.errors import one_line

from .journal import Journal, json_default
from .objective import ASK_TELL, ObjectiveError, check_callable, describe, metrics
from .schedule import ReplayError, Scheduler
from .search import SearchConfig, SearchError, _setup, _setup_grammar, _write_atomic, run_search
from .trials import rows as trial_rows
from .workers import Job, Outcome

UNLIMITED = 1_000_000_000
"""A Study's budget when it is given none (config.json records a number)."""
EXECUTION = ("workers", "device", "objective")
"""Settings that may change when a search or study is opened again on its folder (the journal does not
depend on them); any other difference from the saved config.json is an error."""


class StudyError(SearchError):
    """A Study was asked or told something it cannot do (the message says what to do instead)."""


@dataclass(frozen=True)
class Trial:
    """An architecture to evaluate, from ``Study.ask()``; ``folder`` is its own, for any files."""

    index: int
    arch: Any  # einc.Architecture
    epochs: int
    folder: Path

    def __repr__(self) -> str:
        return f"Trial(index={self.index}, arch={self.arch.text!r}, epochs={self.epochs})"


@dataclass(frozen=True)
class TrialResult:
    """One evaluation: ``score`` is None when it failed (``reason`` says why); ``metrics`` holds
    ``score`` and whatever else the objective returned."""

    index: int
    arch: Any  # einc.Architecture
    score: float | None
    metrics: dict[str, Any]
    status: str
    reason: str | None = None
    params: int | None = None
    flops: int | None = None
    epochs: int = 1

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def __repr__(self) -> str:
        told = f"score={self.score!r}" if self.ok else f"reason={self.reason!r}"
        return f"TrialResult(index={self.index}, {told}, arch={self.arch.text!r})"


@dataclass(frozen=True)
class SearchResult:
    """What ``einc.search`` returns: the best evaluation (None when all failed), every trained one
    in proposal order (repeats of an architecture, which reuse its result, are left out), and,
    when einc trained the candidates, the final test metrics of the best."""

    best: TrialResult | None
    trials: list[TrialResult]
    minimize: bool
    out: Path | None
    summary: dict[str, Any] = field(repr=False)
    final: dict[str, Any] | None = None  # the best retrained on train + validation, scored on test (einc's training)
    rows: list[dict[str, Any]] = field(default_factory=list, repr=False)  # every evaluation, as `einc trials` prints


# --------------------------------------------------------------------------- einc.search


def search(objective: Callable[..., Any] | None = None, grammar: str = SearchConfig.grammar,
           input_shape: Sequence[int] | None = None, strategy: str = SearchConfig.strategy, seeds: Sequence[Any] = (),
           budget: int = SearchConfig.budget, workers: int = SearchConfig.workers, out: str | Path | None = None,
           seed: int = SearchConfig.seed, *, minimize: bool = False, data: Any = None, evaluator: Any = None,
           on_progress: Callable[[Any], None] | None = None, **settings: Any) -> SearchResult:
    """Search ``grammar``'s space for the architecture that ``objective(arch, ctx)`` scores best, or,
    without an objective, for the one that einc's own training scores best on ``data``.

    ``data`` is a dataset as ``--data`` names one (``"digits"``, an Unseen-NAS folder, a ``.npz``,
    ``"x.npy,y.npy"``) or a loaded ``einc.runtime.data.Dataset`` (saved as ``OUT/data.npz``, so that
    the workers and a resume read it); with an objective it is optional (``ctx.data``). ``out``
    keeps the run (config.json, journal.jsonl, each trial's folder, summary, best.arch): calling
    ``search`` again with the same ``out`` and settings resumes it, or returns its result when it
    is complete; ``workers`` and ``device`` may differ. Without ``out`` it runs in a temporary
    folder, removed at the end. ``settings`` are any other field of ``SearchConfig`` (epochs,
    fidelity, population, lr, task, metric, max_params, ...), with its defaults. ``evaluator``
    replaces the local workers (a ``RayEvaluator``, say); the caller closes it.
    """
    if objective is not None:
        check_callable(objective)
    elif data is None:
        raise StudyError("einc.search needs an objective of your own, or data to train the candidates on (data=)")
    with _folder(out) as folder:
        config = _config(grammar=grammar, input_shape=input_shape, data=_data(data, folder), strategy=strategy,
                         seeds=seeds, settings=dict(settings, budget=budget, workers=workers, seed=seed,
                                                    objective=None if objective is None else describe(objective),
                                                    minimize=minimize, **_task_of(data, settings)))
        result = run(config, folder, resume=_open(folder, config), evaluator=evaluator, on_progress=on_progress,
                     objective=objective)
    return result if out is not None else dataclasses.replace(result, out=None)


def run(config: SearchConfig, out: str | Path, resume: bool = False, evaluator: Any = None,
        on_progress: Callable[[Any], None] | None = None,
        objective: Callable[..., Any] | None = None) -> SearchResult:
    """Run (or resume) the search ``config`` describes into ``out``, as a ``SearchResult``: what
    ``einc.search`` and ``einc search`` both do. ``objective`` defaults to the one
    ``config.objective`` names (None: einc's own training on ``config.data``)."""
    summary = run_search(config, out, resume=resume, evaluator=evaluator, on_progress=on_progress,
                         objective=objective)
    config = SearchConfig.load(Path(out) / "config.json")
    grammar = _setup_grammar(config)
    shape = tuple(summary["input_shape"])
    records = Journal(Path(out) / "journal.jsonl").records()
    trials = [_result(r, grammar, shape, config) for r in _evals(records)]
    final = next((r for r in records if r.get("kind") == "final"), None)
    return SearchResult(_best(trials, config), trials, config.goal().minimize, Path(out), summary,
                        None if final is None else dict(final.get("metrics", {})),
                        trial_rows(records, config.goal(), config.epochs))


def format_result(result: SearchResult, config: SearchConfig) -> str:
    """The lines ``einc search --objective`` prints (``config``: the search's, as saved)."""
    failed = [t for t in result.trials if not t.ok]
    s = result.summary
    lines = [f"{config.strategy} with objective {config.objective} ({'minimised' if config.minimize else 'maximised'}"
             f", input {'x'.join(map(str, s['input_shape']))}): {len(result.trials)} evaluated "
             f"({len(failed)} failed), {s['reused_duplicates']} repeats reused, "
             f"{s['retried_proposals']} repeated proposals redrawn"]
    b = result.best
    if b is None:
        reasons = sorted({str(t.reason).split(":")[0] for t in failed})
        lines.append(f"  no evaluation succeeded; reasons: {', '.join(reasons) or 'none recorded'} "
                     "(see the journal's reason fields)")
    else:
        lines.append(f"  best found (evaluation {b.index}, {b.params or 0:,} backbone params): score {b.score:g}")
        lines.append(f"  {b.arch.text}")
    lines += [f"  note: {n}" for n in s.get("notes", [])]
    if result.out is not None:
        lines.append(f"  files: {result.out}/" + ", ".join(["config.json", *s.get("files", ["journal.jsonl"]),
                                                            "trials/"]))
    return "\n".join(lines)


# --------------------------------------------------------------------------- einc.Study


def _told(**kwargs: Any) -> dict[str, Any]:
    raise StudyError("a Study's trials are evaluated by its caller (tell), not by a worker")


class _Handout:
    """The ``Evaluator`` a Study's Scheduler submits to: jobs wait here until ``ask()`` hands them out."""

    def __init__(self) -> None:
        self.jobs: deque[Job] = deque()

    def submit(self, job: Job) -> None:
        self.jobs.append(job)

    def results(self) -> Iterator[Outcome]:
        return iter(())

    @property
    def pending(self) -> int:
        return len(self.jobs)

    def close(self) -> None:
        self.jobs.clear()


class Study:
    """Ask-and-tell search: ``trial = study.ask()``, evaluate ``trial.arch``, ``study.tell(trial, value)``.

    ``value`` is a float, a dict with ``score`` (and other metrics to journal), or an exception
    (a failed evaluation with its reason; so are a non-finite or missing score). ``budget``
    bounds the trials asked (None: no bound). Not thread-safe: ask and tell from one thread.
    See the module docstring for resuming with ``out`` and for how many trials may be open.
    """

    def __init__(self, grammar: str = SearchConfig.grammar, input_shape: Sequence[int] | None = None,
                 strategy: str = SearchConfig.strategy, seed: int = SearchConfig.seed, out: str | Path | None = None,
                 *, minimize: bool = False, seeds: Sequence[Any] = (), budget: int | None = None, **settings: Any):
        from einc.ops import feature_for

        for name in ("workers", "data", "objective", "fidelity", "device", "time_limit"):
            if name in settings:
                raise StudyError(f"a Study's caller evaluates its trials: {name}= does not apply "
                                 "(einc.search takes it)")
        self.config = _config(grammar=grammar, input_shape=input_shape, data=None, strategy=strategy, seeds=seeds,
                              settings=dict(settings, budget=UNLIMITED if budget is None else budget, seed=seed,
                                            objective=ASK_TELL, minimize=minimize))
        self._tmp = tempfile.TemporaryDirectory(prefix="einc-study-") if out is None else None
        self.out = None if out is None else Path(out)
        self.folder = Path(self._tmp.name) if self._tmp is not None else Path(out)  # type: ignore[arg-type]
        resume = _open(self.folder, self.config)
        self.grammar, _, strategy_ = _setup(self.config)
        shape = self.config.input_shape
        assert shape is not None
        self.input_shape: tuple[int, ...] = tuple(shape)
        self._mode = feature_for(self.input_shape).mode
        journal = Journal(self.folder / "journal.jsonl")
        records = journal.records() if resume else []
        for r in records:
            if r.get("grammar_hash") not in (None, self.grammar.hash):
                raise StudyError(f"{journal.path}: error: record {r.get('index')} was made with another version "
                                 f"of grammar {self.config.grammar}; open it with the grammar it was started with")

        def describe_tree(tree) -> dict[str, Any]:
            inf = self.grammar.architecture(tree, self._mode).infer(self.input_shape)
            return {"params": inf.params, "flops": inf.flops, "activations": inf.activations}

        def job_for(index: int, tree, text: str, epochs: int) -> Job:
            return Job(str(index), _told, {"arch": text, "epochs": epochs})

        self._handout = _Handout()
        self._scheduler = s = Scheduler(
            strategy_, journal, budget=self.config.budget, workers=1, job_for=job_for, describe=describe_tree,
            base={"grammar_hash": self.grammar.hash, "seed": self.config.seed, "strategy": self.config.strategy},
            rungs=(self.config.epochs,), lag=self.config.lag, goal=self.config.goal())
        try:
            s.replay(records, s.pending.records() if records else ())
        except ReplayError as e:
            raise StudyError(f"{journal.path}: error: {e}") from None
        now = round(time.time(), 3)
        journal.append({"kind": "session", "started": now, "ready": now, "workers": 1, "resumed": bool(records),
                        "pid": os.getpid()})
        s.resubmit(self._handout)  # asked before the last session ended and never told: asked again first
        self._asked: dict[int, tuple[float, float]] = {}
        self._results: dict[int, TrialResult] = {}

    # ------------------------------------------------------------------ ask and tell

    def ask(self) -> Trial:
        """The next architecture to evaluate; ``StudyError`` when a result must be told first."""
        s = self._scheduler
        if not self._handout.jobs:
            s.workers = len(s.running) + 1  # room for exactly one more proposal (repeats are journaled on the way)
            s.advance(self._handout)
        if not self._handout.jobs:
            raise StudyError(self._why_not())
        job = self._handout.jobs.popleft()
        index = int(job.key)
        self._asked[index] = (time.monotonic(), time.time())
        folder = self.folder / "trials" / str(index)
        folder.mkdir(parents=True, exist_ok=True)
        return Trial(index, self.grammar.architecture(s.trees[index], self._mode), job.kwargs["epochs"], folder)

    def tell(self, trial: Trial | int, value: Any) -> TrialResult:
        """Deliver ``trial``'s result: a float, a dict with ``score``, or an exception (failed)."""
        index = trial.index if isinstance(trial, Trial) else trial
        s = self._scheduler
        if not isinstance(index, int) or index not in self._asked:
            if isinstance(index, int) and (index in s.results or index in s.finished):
                raise StudyError(f"trial {index} was told already")
            raise StudyError(f"trial {index} is not open: tell a trial that ask() returned")
        status, reason, result = "ok", None, None
        if isinstance(value, BaseException):
            status, reason = "failed", one_line(value)
        else:
            try:
                result = {"metrics": json.loads(json.dumps(metrics(value), allow_nan=False, default=json_default))}
            except ObjectiveError as e:
                status, reason = "failed", one_line(e)
            except (TypeError, ValueError) as e:
                status, reason = "failed", f"TypeError: the told metrics are not plain JSON ({e})"
        t0, wall = self._asked.pop(index)
        s.deliver(Outcome(str(index), status, result, reason, time.monotonic() - t0, None, wall,
                          wall + time.monotonic() - t0, "study"))
        s.workers = len(s.running)  # no new proposal; once none will come, the rest enter the journal
        s.advance(self._handout)
        return self._told(s.finished.get(index) or s.results[index])

    def _told(self, r: dict[str, Any]) -> TrialResult:
        if r["index"] not in self._results:  # parsed once: a told record does not change
            self._results[r["index"]] = _result(r, self.grammar, self.input_shape, self.config)
        return self._results[r["index"]]

    @property
    def trials(self) -> list[TrialResult]:
        """Every told trial, in proposal order."""
        return [self._told(r) for r in _evals(self._scheduler.known())]

    @property
    def rows(self) -> list[dict[str, Any]]:
        """Every told trial, repeats too, as the flat rows ``einc trials`` prints (runtime/trials.py)."""
        return trial_rows(self._scheduler.known(), self.config.goal(), self.config.epochs)

    @property
    def best(self) -> TrialResult | None:
        """The told trial with the best score (the earliest on ties); None before any succeeded."""
        return _best(self.trials, self.config)

    @property
    def open(self) -> list[int]:
        """Trials asked and not told yet."""
        return sorted(self._asked)

    def close(self) -> None:
        """Remove the temporary folder of a Study without ``out`` (a folder given as ``out`` stays)."""
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> Study:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _why_not(self) -> str:
        s = self._scheduler
        if not s.proposing():
            if s.exhausted:
                return s.notes[-1]
            return f"the budget of {self.config.budget} trials is spent"
        c, k = s.committed, len(s.proposals)
        if c < k - s.lag:
            return (f"tell trial {c} first: trial {k} is proposed from the results of the trials before "
                    f"{k - s.lag} (lag={s.lag}), in order, so at most lag + 1 = {s.lag + 1} trials can be open "
                    f"(open now: {', '.join(map(str, self.open))}); a larger lag= allows more")
        return (f"tell trial {c} first: regularised evolution has proposed its initial population "
                f"(population={self.config.population}) and mutates only members with a result")


# --------------------------------------------------------------------------- shared


def _config(*, grammar: str, input_shape: Sequence[int] | None, data: str | None, strategy: str,
            seeds: Sequence[Any], settings: dict[str, Any]) -> SearchConfig:
    known = {f.name for f in fields(SearchConfig)} - {"grammar", "input_shape", "data", "strategy", "seeds",
                                                       "seed_names"}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise StudyError(f"unknown setting {', '.join(unknown)}; the settings are {', '.join(sorted(known))} "
                         "(einc.runtime.search.SearchConfig)")
    if input_shape is None and data is None:
        from .candidate import cached_grammar

        input_shape = cached_grammar(grammar, tuple(settings.get("plugins", ()))).default_shape()
        if input_shape is None:
            raise StudyError(f"grammar {grammar} declares no input shape: give input_shape=")
    names, texts = _seed_texts(seeds)
    if "plugins" in settings:
        settings["plugins"] = tuple(str(Path(p).resolve()) for p in settings["plugins"])
    return SearchConfig(grammar=grammar, data=data, input_shape=None if input_shape is None else tuple(input_shape),
                        strategy=strategy, seeds=texts, seed_names=names, **settings)


def _data(data: Any, folder: Path) -> str | None:
    """``data`` as config.json records it: a loaded Dataset is saved as ``folder/data.npz`` first."""
    from .data import KEYS, Dataset

    if data is None or isinstance(data, str):
        return data
    if isinstance(data, Path):
        return str(data)
    if not isinstance(data, Dataset):
        raise StudyError(f"data is a {type(data).__name__}; give a dataset name or path (as --data takes) or an "
                         "einc.runtime.data.Dataset")
    import numpy as np

    path = folder / "data.npz"
    arrays = {k: getattr(data, k) for k in KEYS}
    if path.exists():
        with np.load(path, allow_pickle=False) as saved:
            same = set(saved.files) == set(KEYS) and all(np.array_equal(saved[k], v) for k, v in arrays.items())
        if same:
            return str(path.resolve())
        if (folder / "journal.jsonl").exists():
            raise StudyError(f"{path}: error: this folder's search was made with other data; use another out")
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "data.tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    return str(path.resolve())


def _task_of(data: Any, settings: dict[str, Any]) -> dict[str, Any]:
    """A loaded Dataset's task and metric, unless given: its saved .npz would infer them anew."""
    from .data import Dataset

    if not isinstance(data, Dataset) or data.task is None:
        return {}
    return {k: v for k, v in (("task", data.task.kind), ("metric", data.task.metric)) if k not in settings}


def _seed_texts(seeds: Sequence[Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(names, bracket texts) of seeds given as Architectures, bundled names (``"resnet18"``, ``"mix"``),
    ``.arch`` files or bracket-notation strings."""
    from einc.seeds import named_seeds, seed_names

    if isinstance(seeds, (str, Path)):
        seeds = (seeds,)
    pairs: list[tuple[str, str]] = []
    for n, seed in enumerate(seeds, 1):
        if hasattr(seed, "text") and hasattr(seed, "tree"):
            pairs.append((f"seed{n}", seed.text))
        elif isinstance(seed, Path) or (isinstance(seed, str) and seed.endswith(".arch")):
            pairs.append((Path(seed).stem, Path(seed).read_text(encoding="utf-8").strip()))
        elif isinstance(seed, str) and seed in seed_names():
            pairs += named_seeds(seed)
        elif isinstance(seed, str):
            pairs.append((f"inline{n}", seed.strip()))
        else:
            raise StudyError(f"seed {n} is a {type(seed).__name__}; give an einc.Architecture, a bundled seed "
                             "name, an .arch file or a bracket-notation string")
    return tuple(p[0] for p in pairs), tuple(p[1] for p in pairs)


class _folder:
    """``out`` as a Path, or a temporary folder removed at the end."""

    def __init__(self, out: str | Path | None) -> None:
        self.out = out
        self.tmp: tempfile.TemporaryDirectory[str] | None = None

    def __enter__(self) -> Path:
        if self.out is not None:
            return Path(self.out)
        self.tmp = tempfile.TemporaryDirectory(prefix="einc-search-")
        return Path(self.tmp.name)

    def __exit__(self, *exc: object) -> None:
        if self.tmp is not None:
            self.tmp.cleanup()


def _open(folder: Path, config: SearchConfig) -> bool:
    """Whether ``folder`` holds this search already (then it resumes); a different one is an error."""
    saved_path, journal = folder / "config.json", folder / "journal.jsonl"
    mine = json.loads(json.dumps(asdict(config)))
    if not (journal.exists() and journal.stat().st_size):
        folder.mkdir(parents=True, exist_ok=True)
        Path(str(journal) + ".pending").unlink(missing_ok=True)  # results of a journal that is gone
        _write_atomic(saved_path, json.dumps(mine, indent=2) + "\n")
        return False
    if not saved_path.exists():
        raise StudyError(f"{journal}: error: a journal without its config.json; choose another out")
    saved = SearchConfig.load(saved_path)
    theirs = json.loads(json.dumps(asdict(saved)))
    differ = [f.name for f in fields(SearchConfig) if f.name not in EXECUTION and mine[f.name] != theirs[f.name]]
    if (config.objective == ASK_TELL) != (saved.objective == ASK_TELL):
        differ.insert(0, "objective")
    if differ:
        what = ", ".join(f"{k} {theirs[k]!r} (now {mine[k]!r})" for k in differ[:4])
        raise StudyError(f"{folder}: error: holds another search ({what}); use another out, or the same settings "
                         "to continue it")
    if any(mine[k] != theirs[k] for k in EXECUTION):
        _write_atomic(saved_path, json.dumps(mine, indent=2) + "\n")
    return True


def _evals(records: Any) -> list[dict[str, Any]]:
    return sorted((r for r in records if r.get("kind", "eval") == "eval" and "duplicate_of" not in r),
                  key=lambda r: r["index"])


def _result(r: dict[str, Any], grammar: Any, shape: tuple[int, ...], config: SearchConfig) -> TrialResult:
    return TrialResult(r["index"], grammar.parse(r["arch"], shape), config.goal().value(r),
                       dict(r.get("metrics", {})), r["status"], r.get("reason"), r.get("params"), r.get("flops"),
                       r.get("epochs", config.epochs))


def _best(trials: list[TrialResult], config: SearchConfig) -> TrialResult | None:
    """The longest-trained first (multi-fidelity), then the best score, then the earliest."""
    sign = -1 if config.minimize else 1
    ok = [(t.epochs, sign * t.score, -t.index, t) for t in trials if t.score is not None and math.isfinite(t.score)]
    return max(ok, key=lambda x: x[:3])[3] if ok else None
