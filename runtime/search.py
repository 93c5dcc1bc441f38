"""A search: a strategy proposes, an evaluator trains, a journal remembers.

This module sets a search up (grammar, data, strategy, workers) and writes its outputs; the
steady-state loop and its replay on ``--resume`` are runtime/schedule.py. Durability rests on
one rule: every proposal and every finished evaluation is a journal line on disk (flushed and
fsync'd) before the search moves on, so a killed search loses nothing and resumes exactly.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from einc.errors import EinError
from einc.sample import Budget

from .goal import ACCURACY, Goal
from .journal import Journal
from .report_html import LivePage
from .schedule import LAG
from .task import Task, TaskError, check_choice
from .train_config import TrainConfig
from .warmup import problem as _warmup_problem
from .warmup import warm_up

STRATEGIES = ("rs", "re", "sample", "bo")
SHARED = ("grammar", "data")
"""The kwargs of a search's jobs that name its grammar and dataset (``Job.shared``)."""


class SearchError(EinError):
    """A search cannot start or resume as asked."""


@dataclass
class SearchConfig:
    """Everything that determines a search's proposals and scores; saved as config.json.

    The one home of a search's defaults: training settings default to ``TrainConfig``'s, limits to
    ``einc.sample.Budget``'s, and the command line and ``einc.search`` show these."""

    grammar: str = "einspace"
    data: str | None = "digits"  # None: no dataset (a user objective's search, with input_shape)
    data_seed: int = 0
    strategy: str = "re"
    seeds: tuple[str, ...] = ()  # architecture strings (files are read by the CLI)
    seed_names: tuple[str, ...] = ()
    budget: int = 20
    population: int = 100
    tournament: int = 10
    prefilter: int = 1  # evolution trains the surrogate's pick of this many children (runtime/prefilter.py); 1: off
    warmup: str | None = None  # "PROXY:K": the initial population is the best of K samples by PROXY (runtime/warmup.py)
    epochs: int = TrainConfig.epochs
    final_epochs: int | None = None  # the retrain on train+valid; None: same as epochs
    lr: float = TrainConfig.lr
    weight_decay: float = TrainConfig.weight_decay
    batch_size: int = TrainConfig.batch_size
    seed: int = 0
    device: str | None = None
    time_limit: float | None = None  # seconds per evaluation
    workers: int = 1
    compile: bool = False  # torch.compile each candidate (worth it on a GPU)
    plugins: tuple[str, ...] = ()  # Python files adding operations to the grammar's library
    fidelity: tuple[int, ...] = ()  # epochs per rung of successive halving; () = every evaluation `epochs`
    eta: int = 3  # the best 1/eta of a rung is promoted to the next
    lag: int = LAG  # proposal k sees the results of proposals < k - lag (runtime/schedule.py: determinism)
    amp: bool | None = None  # bfloat16 autocast on CUDA; None: where it pays (runtime/train.py)
    graphs: bool | None = None  # CUDA-graph training steps; None: on for CUDA
    task: str | None = None  # runtime/task.py's kind; None: inferred from the training targets (runtime/data.py)
    metric: str | None = None  # the task's metric; None: the kind's default (accuracy, map, mse, rel-l2)
    max_params: int = Budget.max_params
    max_flops: int = Budget.max_flops
    max_activations: int = Budget.max_activations
    max_nodes: int = Budget.max_nodes
    max_depth: int = Budget.max_depth
    # the user's own objective (runtime/objective.py): "FILE.py:FUNC", "module:FUNC", the module:qualname
    # of a Python function (einc.search), or "ask/tell" (einc.Study); None: train and score on data
    objective: str | None = None
    minimize: bool = False  # with an objective: smaller scores are better
    input_shape: tuple[int, ...] | None = None  # with an objective and no data: the candidates' input

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise SearchError(f'strategy "{self.strategy}" is not one of {", ".join(STRATEGIES)}')
        if min(self.budget, self.workers, self.epochs, self.population, self.tournament) < 1:
            raise SearchError("budget, workers, epochs, population and tournament must be positive")
        if self.lag < 0:
            raise SearchError(f"lag={self.lag}: a number of proposals, 0 or more")
        self.seeds, self.seed_names, self.plugins = tuple(self.seeds), tuple(self.seed_names), tuple(self.plugins)
        self.fidelity = tuple(self.fidelity)
        self.input_shape = None if self.input_shape is None else tuple(self.input_shape)
        if self.data is None and (self.objective is None or self.input_shape is None):
            raise SearchError("a search without data needs an objective of your own and an input shape "
                              "(--objective and --input)" if self.objective is None else
                              "a search of your own objective without data needs the candidates' input shape "
                              "(--input, input_shape=)")
        if self.fidelity and (list(self.fidelity) != sorted(set(self.fidelity)) or min(self.fidelity) < 1):
            raise SearchError(f"fidelity {','.join(map(str, self.fidelity))}: epochs per rung must be positive "
                              "and increasing")
        if self.eta < 2:
            raise SearchError(f"eta={self.eta}: successive halving keeps the best 1/eta, so eta must be >= 2")
        if self.prefilter < 1 or self.prefilter > 1 and self.strategy != "re":
            raise SearchError(f"prefilter={self.prefilter}: children per proposal (>= 1) of evolution (strategy re)")
        if self.warmup is not None and (problem := _warmup_problem(self.warmup, self.strategy, self.data)):
            raise SearchError(problem)
        try:
            check_choice(self.task, self.metric)
        except TaskError as e:
            raise SearchError(str(e)) from None

    def train(self, epochs: int | None = None) -> dict[str, Any]:
        """Training settings of one job; ``epochs`` defaults to the longest any evaluation trains."""
        return {"epochs": epochs or (self.fidelity[-1] if self.fidelity else self.epochs), "lr": self.lr,
                "weight_decay": self.weight_decay, "batch_size": self.batch_size, "seed": self.seed,
                "time_limit": self.time_limit, "amp": self.amp, "graphs": self.graphs}

    def goal(self) -> Goal:
        """The metric this search optimises and its direction (runtime/goal.py)."""
        if self.objective is not None:  # the user's function returns metrics["score"]
            return Goal("score", self.minimize)
        task = self.data_task()
        return ACCURACY if task is None else task.goal

    def data_task(self) -> Task | None:
        """The task of this search's data (runtime/task.py), None without data."""
        data = self.dataset()
        return None if data is None else data.task

    def dataset(self):
        """This search's data as its task, loaded once per process (runtime/data.py); None without data."""
        if self.data is None:
            return None
        from .data import load_data_cached

        return load_data_cached(self.data, self.data_seed, task=self.task, metric=self.metric)

    def job_context(self) -> dict[str, Any]:
        """What every evaluation job needs besides its architecture (plain data: it travels to workers)."""
        return {"grammar": self.grammar, "plugins": self.plugins, "data": self.data, "data_seed": self.data_seed,
                "device": self.device, "compile_model": self.compile, "task": self.task,
                "metric": self.metric}

    @classmethod
    def load(cls, path: Path, resuming: bool = False) -> SearchConfig:
        """The configuration saved at ``path``; ``resuming`` refuses one einc can only report on."""
        try:
            raw = json.loads(path.read_text())
            known = {f.name for f in fields(cls)}
            config = cls(**{k: v for k, v in raw.items() if k in known})
        except (OSError, ValueError, TypeError) as e:
            raise SearchError(f"{path}: error: cannot read the search configuration ({e})") from None
        if resuming and "lag" not in raw:
            raise SearchError(f"{path}: error: this search was recorded by einc 0.1.0, which journaled results "
                              "in the order they finished; einc now keeps them in proposal order, so it cannot "
                              "continue it (the journal is kept as it is, and `einc report` still reads it)")
        return config


@dataclass
class Progress:
    """What a caller may show while a search runs."""

    done: int = 0      # trainings finished (the budget counts these)
    total: int = 0
    best: float | None = None
    events: list[str] = field(default_factory=list)


def threads_per_worker(workers: int) -> int:
    """CPU threads for each worker's torch, so that workers do not fight over cores.

    ``OMP_NUM_THREADS``, when set, caps it, as it caps torch in any one process: on a shared
    machine it keeps a search's workers from spin-waiting against its neighbours.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    threads = max(1, cores // workers)
    cap = os.environ.get("OMP_NUM_THREADS", "")
    return min(threads, int(cap)) if cap.isdigit() and int(cap) > 0 else threads


def run_search(config: SearchConfig, out: str | Path, resume: bool = False, evaluator=None,
               on_progress: Callable[[Progress], None] | None = None,
               objective: Callable[..., Any] | None = None) -> dict[str, Any]:
    """Run (or resume) a search into folder ``out``; returns the summary (also written there).

    One search per folder at a time: a second one on the same ``out`` (a resume started while
    the search still runs, say) would interleave two journals, so it is refused in one line.

    ``evaluator`` (an ``Evaluator``) replaces the local worker processes: a Ray cluster, or a
    fake in tests. The caller then owns it and closes it. With ``config.objective``, each candidate
    is scored by the user's function (runtime/objective.py): ``objective`` when given (a function
    of this session, shipped to the workers by value), else the one ``config.objective`` names;
    there is then no final retrain on train + validation.
    """
    out = Path(out)
    with _alone(out):
        return _run(config, out, resume, evaluator, on_progress, objective)


@contextlib.contextmanager
def _alone(out: Path) -> Iterator[None]:
    """Hold ``out/.lock`` (flock: the kernel drops it when this process dies, however it dies)."""
    if not out.is_dir():  # a new search (bad settings leave no folder behind), or a resume of nothing
        yield
        return
    with open(out / ".lock", "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SearchError(f"{out}: error: another einc search is running in this folder; wait for it "
                              "to end (or stop it), or choose another --out") from None
        yield


def _run(config: SearchConfig, out: Path, resume: bool, evaluator, on_progress, objective) -> dict[str, Any]:
    import functools

    from .candidate import evaluate, evaluate_objective, final_test, prepare, prepare_objective
    from .schedule import ReplayError, Scheduler, outcome_fields
    from .workers import Job, LocalEvaluator

    out = Path(out)
    cfg_path, journal = out / "config.json", Journal(out / "journal.jsonl")
    if resume:
        if not cfg_path.exists():
            raise SearchError(f"{out}: error: nothing to resume (no config.json)")
        config = SearchConfig.load(cfg_path, resuming=True)
        blob = _shipped_objective(config, objective)
    else:
        blob = _shipped_objective(config, objective)  # before anything is written: a bad objective leaves nothing
        if journal.path.exists() and journal.path.stat().st_size:
            raise SearchError(f"{journal.path}: error: a search is already recorded here; "
                              "add --resume to continue it, or choose another --out")
        out.mkdir(parents=True, exist_ok=True)
        _write_atomic(cfg_path, json.dumps(asdict(config), indent=2) + "\n")
        Path(str(journal.path) + ".pending").unlink(missing_ok=True)  # results of a journal that is gone

    started = time.time()
    own = evaluator is None
    if own:
        ready = functools.partial(prepare, **config.job_context(), workers=config.workers) if blob is None else \
            functools.partial(prepare_objective, config.grammar, config.plugins, config.data, config.data_seed, blob,
                              config.task, config.metric)
        evaluator = LocalEvaluator(workers=config.workers, time_limit=config.time_limit,
                                   threads=threads_per_worker(config.workers), prepare=ready)
    page: LivePage | None = None
    try:
        if own:  # workers import torch and load the data while this process sets up
            evaluator.start()
        grammar, data, strategy = _setup(config)
        shape = data.input_shape if data is not None else config.input_shape
        notes = []
        if own and blob is None:  # a remote evaluator's devices are not this machine's; an objective trains itself
            from .train import pick_device, settings_note

            note = settings_note(config.amp, config.graphs, pick_device(config.device))
            notes += [note.removeprefix("note: ")] if note else []
        if blob is not None:
            notes.append("no final retrain on train + validation and test: your objective is the whole evaluation")
        if config.workers > max(1, config.lag // 2):
            notes.append(f"{config.workers} workers with lag {config.lag}: workers may wait for results in proposal "
                         f"order; --lag {2 * config.workers} keeps them busy (the journal depends on the lag, "
                         "not on the workers)")
        records = journal.records()
        for r in records:
            if r.get("grammar_hash") not in (None, grammar.hash):
                raise SearchError(f"{journal.path}: error: record {r.get('index')} was made with another version "
                                  f"of grammar {config.grammar}; resume with the grammar it was started with")

        if config.warmup is not None:  # the initial population: the best samples by a zero-cost proxy
            strategy.seeds += warm_up(config.warmup, strategy.size - len(strategy.seeds), config.seed, grammar, data,
                                      strategy.sampler, config.batch_size, journal, records)
        progress = Progress(total=config.budget)
        goal = config.goal()

        def describe(tree) -> dict[str, Any]:
            inf = grammar.architecture(tree).infer(shape)
            return {"params": inf.params, "flops": inf.flops, "activations": inf.activations}

        def job_for(index: int, tree, text: str, epochs: int) -> Job:
            if blob is not None:
                return Job(str(index), evaluate_objective, dict(
                    arch=text, grammar=config.grammar, plugins=config.plugins, objective=blob, input_shape=shape,
                    data=config.data, data_seed=config.data_seed, device=config.device, seed=config.seed,
                    epochs=epochs, time_limit=config.time_limit, folder=str((out / "trials" / str(index)).resolve()),
                    index=index, task=config.task, metric=config.metric), SHARED)
            return Job(str(index), evaluate, dict(config.job_context(), arch=text, train=config.train(epochs)), SHARED)

        page = LivePage(out, config, goal, grammar, shape)  # OUT/report.html, rewritten at most once a second

        def on_event(s: Scheduler) -> None:
            progress.done = s.finished_trainings
            best = goal.best(s.known())
            progress.best = goal.value(best) if best else None
            page.update()
            if on_progress:
                on_progress(progress)

        scheduler = Scheduler(strategy, journal, budget=config.budget, workers=config.workers, job_for=job_for,
                              describe=describe, base={"grammar_hash": grammar.hash, "seed": config.seed,
                                                       "strategy": config.strategy}, on_event=on_event,
                              rungs=config.fidelity or (config.epochs,), eta=config.eta, lag=config.lag,
                              goal=goal)
        try:
            scheduler.replay(records, scheduler.pending.records() if records else ())
        except ReplayError as e:
            raise SearchError(f"{journal.path}: error: {e}") from None
        on_event(scheduler)
        # a session line marks where this process's work starts, for its throughput figures
        journal.append({"kind": "session", "started": round(started, 3), "ready": round(time.time(), 3),
                        "workers": config.workers, "resumed": bool(records), "pid": os.getpid()})
        scheduler.resubmit(evaluator)
        scheduler.run(evaluator)

        final = next((r for r in records if r.get("kind") == "final"), None)
        best = goal.best(scheduler.evaluations())
        if final is None and best is not None and blob is None:  # a user objective has no test split to score
            evaluator.submit(Job("final", final_test, dict(config.job_context(), arch=best["arch"],
                                                           train=config.train(config.final_epochs)), SHARED))
            for outcome in evaluator.results():
                journal.append({"index": len(scheduler.proposals), "kind": "final", "arch": best["arch"],
                                "of": best["index"], "grammar_hash": grammar.hash, "seed": config.seed,
                                **outcome_fields(outcome)})
    finally:
        if page is not None:  # a stop: no rewrite thread may outlive the search (finish() joined it otherwise)
            page.close()
        if own:
            evaluator.close()

    from .report import write_outputs

    classes = data.num_classes if data is not None else None  # None: no data, best.py is the backbone alone
    summary = write_outputs(out, config, grammar, shape, classes, journal.records(),  # type: ignore[arg-type]
                            notes=tuple(notes + scheduler.notes))
    page.finish()
    return summary


def _shipped_objective(config: SearchConfig, objective: Callable[..., Any] | None) -> bytes | None:
    """The search's objective pickled for the workers (runtime/objective.py), or None for training on data."""
    from .objective import ASK_TELL, load_objective, ship

    if config.objective is None:
        if objective is not None:
            raise SearchError("an objective function was given, but the configuration names none (objective=)")
        return None
    if objective is None:
        if config.objective == ASK_TELL:
            raise SearchError("this search was an einc.Study (ask and tell): continue it with einc.Study(out=...)")
        objective = load_objective(config.objective)
    return ship(objective)


def report_folder(out: str | Path) -> str:
    """Rewrite a search folder's summary, plot and report.html from its journal; the summary's text."""
    from .report import format_summary, write_outputs
    from .report_html import rebuild

    out = Path(out)
    if not (out / "config.json").exists():
        raise SearchError(f"{out}: error: not a search folder (no config.json)")
    config = SearchConfig.load(out / "config.json")
    grammar = _setup_grammar(config)
    data = None if config.data is None else config.dataset()
    shape = data.input_shape if data is not None else config.input_shape
    summary = write_outputs(out, config, grammar, shape, data.num_classes if data is not None else None,
                            Journal(out / "journal.jsonl").records())  # type: ignore[arg-type]
    rebuild(out, config, grammar, shape)
    return format_summary(summary, out)


def _setup_grammar(config: SearchConfig):
    from .candidate import cached_grammar

    return cached_grammar(config.grammar, tuple(config.plugins))  # the one a --ray evaluator ships, compiled once


def _setup(config: SearchConfig):
    """Grammar, data and strategy of a search; the strategy's RNG starts from ``config.seed``."""
    from einc.sample import Sampler

    from .bo import BayesianOptimisation
    from .prefilter import PrefilteredEvolution, proxy_for
    from .strategies import RandomSearch, RegularisedEvolution

    grammar = _setup_grammar(config)
    data = None if config.data is None else config.dataset()
    shape = data.input_shape if data is not None else config.input_shape
    if data is not None and config.input_shape is not None and tuple(config.input_shape) != data.input_shape:
        raise SearchError(f"input shape {','.join(map(str, config.input_shape))} is not the data's "
                          f"({','.join(map(str, data.input_shape))}); leave it out with data")
    shape = grammar.check_input(shape)
    budget = Budget(max_params=config.max_params, max_flops=config.max_flops,
                    max_activations=config.max_activations, max_nodes=config.max_nodes,
                    max_depth=config.max_depth)
    sampler = Sampler(grammar.table, shape, budget)
    rng = random.Random(config.seed)
    names = config.seed_names or tuple(f"seed {i}" for i in range(len(config.seeds)))
    seeds = tuple(_seed_tree(grammar, text, name, shape) for text, name in zip(config.seeds, names, strict=False))
    if config.strategy == "bo":
        return grammar, data, BayesianOptimisation(sampler, rng, seeds)
    if config.strategy == "re" and config.prefilter > 1:
        return grammar, data, PrefilteredEvolution(sampler, rng, config.population, config.tournament, seeds,
                                                   config.prefilter, proxy=proxy_for(grammar, data, config.seed,
                                                                                     config.batch_size))
    if config.strategy == "re":
        return grammar, data, RegularisedEvolution(sampler, rng, config.population, config.tournament, seeds)
    return grammar, data, RandomSearch(sampler, rng, config.strategy)


def _seed_tree(grammar, text: str, name: str, shape):
    try:
        return grammar.parse(text, shape).tree
    except EinError as e:
        raise SearchError(f"{name}: error: not a valid seed for input {','.join(map(str, shape))}: "
                          + str(e).splitlines()[0]) from None


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
