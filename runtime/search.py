"""A search: a strategy proposes, an evaluator trains, a journal remembers.

Durability rests on one rule: every finished evaluation is a journal line on disk (flushed
and fsync'd) before the search moves on, and the strategy's proposals are a deterministic
function of the seed and the fitnesses it has seen. Resuming a killed search therefore
replays the strategy against the journal: each replayed proposal must equal the journaled
architecture (else the journal belongs to another search), finished evaluations are reused,
and the first unfinished one is trained, with the RNG exactly where it was.

Identical architectures (same canonical string) are trained once per search; later copies
get a journal line pointing at the first (``duplicate_of``).
"""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from einc.errors import EinError

from .journal import Journal

STRATEGIES = ("rs", "re", "sample")


class SearchError(EinError):
    """A search cannot start or resume as asked."""


@dataclass
class SearchConfig:
    """Everything that determines a search's proposals and scores; saved as config.json."""

    grammar: str = "einspace"
    data: str = "digits"
    data_seed: int = 0
    strategy: str = "re"
    seeds: tuple[str, ...] = ()  # architecture strings (files are read by the CLI)
    seed_names: tuple[str, ...] = ()
    budget: int = 20
    population: int = 100
    tournament: int = 10
    epochs: int = 8
    final_epochs: int | None = None  # the retrain on train+valid; None: same as epochs
    lr: float = 0.04
    weight_decay: float = 3e-4
    batch_size: int = 256
    seed: int = 0
    device: str | None = None
    time_limit: float | None = None  # seconds per evaluation
    workers: int = 1
    compile: bool = False  # torch.compile each candidate (worth it on a GPU)
    max_params: int = 25_000_000
    max_flops: int = 10_000_000_000
    max_activations: int = 32_000_000
    max_nodes: int = 2_000
    max_depth: int = 200

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise SearchError(f'strategy "{self.strategy}" is not one of {", ".join(STRATEGIES)}')
        if min(self.budget, self.workers, self.epochs, self.population, self.tournament) < 1:
            raise SearchError("budget, workers, epochs, population and tournament must be positive")
        self.seeds, self.seed_names = tuple(self.seeds), tuple(self.seed_names)

    def train(self, epochs: int | None = None) -> dict[str, Any]:
        return {"epochs": epochs or self.epochs, "lr": self.lr, "weight_decay": self.weight_decay,
                "batch_size": self.batch_size, "seed": self.seed, "time_limit": self.time_limit}

    @classmethod
    def load(cls, path: Path) -> "SearchConfig":
        try:
            raw = json.loads(path.read_text())
            known = {f.name for f in fields(cls)}
            return cls(**{k: v for k, v in raw.items() if k in known})
        except (OSError, ValueError, TypeError) as e:
            raise SearchError(f"{path}: error: cannot read the search configuration ({e})") from None


@dataclass
class Progress:
    """What a caller may show while a search runs."""

    done: int = 0
    total: int = 0
    best: float | None = None
    events: list[str] = field(default_factory=list)


def _fitness(record: dict[str, Any]) -> float | None:
    return record.get("metrics", {}).get("val_acc") if record.get("status") == "ok" else None


def run_search(config: SearchConfig, out: str | Path, resume: bool = False, evaluator=None,
               on_progress: Callable[[Progress], None] | None = None) -> dict[str, Any]:
    """Run (or resume) a search into folder ``out``; returns the summary (also written there)."""
    import einc
    from einc.arch import show
    from einc.sample import Budget, Sampler

    from .candidate import evaluate, final_test
    from .data import load_data_cached
    from .evaluate import Job, LocalEvaluator
    from .strategies import RandomSearch, RegularisedEvolution

    out = Path(out)
    cfg_path, journal = out / "config.json", Journal(out / "journal.jsonl")
    if resume:
        if not cfg_path.exists():
            raise SearchError(f"{out}: error: nothing to resume (no config.json)")
        config = SearchConfig.load(cfg_path)
    else:
        if journal.path.exists() and journal.path.stat().st_size:
            raise SearchError(f"{journal.path}: error: a search is already recorded here; "
                              "add --resume to continue it, or choose another --out")
        out.mkdir(parents=True, exist_ok=True)
        _write_atomic(cfg_path, json.dumps(asdict(config), indent=2) + "\n")

    t_start = time.monotonic()
    grammar = einc.load(config.grammar)
    data = load_data_cached(config.data, config.data_seed)
    shape = data.input_shape
    budget = Budget(max_params=config.max_params, max_flops=config.max_flops,
                    max_activations=config.max_activations, max_nodes=config.max_nodes,
                    max_depth=config.max_depth)
    sampler = Sampler(grammar.table, shape, budget)
    rng = random.Random(config.seed)
    seeds = tuple(_seed_tree(grammar, text, name, shape) for text, name in
                  zip(config.seeds, config.seed_names or [f"seed {i}" for i in range(len(config.seeds))]))
    if config.strategy == "re":
        strategy = RegularisedEvolution(sampler, rng, config.population, config.tournament, seeds)
    else:
        strategy = RandomSearch(sampler, rng, config.strategy)

    records = journal.records()
    evals = {r["index"]: r for r in records if r.get("kind", "eval") == "eval"}
    for r in records:
        if r.get("grammar_hash") not in (None, grammar.hash):
            raise SearchError(f"{journal.path}: error: record {r.get('index')} was made with another version "
                              f"of grammar {config.grammar}; resume with the grammar it was started with")
    first: dict[str, dict] = {}
    for i in sorted(evals):
        first.setdefault(evals[i]["arch"], evals[i])

    progress = Progress(total=config.budget)
    fresh = 0  # evaluations finished by this process (a resumed search reuses the rest)
    own = evaluator is None
    evaluator = evaluator or LocalEvaluator(workers=config.workers, time_limit=config.time_limit)
    common = {"grammar": config.grammar, "data": config.data, "data_seed": config.data_seed,
              "device": config.device, "compile_model": config.compile}
    train_seconds = 0.0
    try:
        index = 0
        while index < config.budget:
            size = min(config.workers, config.budget - index)
            if config.strategy == "re" and index < config.population:
                size = min(size, config.population - index)  # mutations need the population observed
            batch = [strategy.propose() for _ in range(size)]
            results: dict[int, dict] = {}
            waiting: dict[str, list[int]] = {}
            texts = {}
            for k, prop in enumerate(batch):
                i, text = index + k, show(prop.tree)
                texts[i] = text
                base = {"index": i, "kind": "eval", "arch": text, "grammar_hash": grammar.hash,
                        "seed": config.seed, "strategy": config.strategy, "origin": prop.origin,
                        "parent": prop.parent}
                if i in evals:
                    if evals[i]["arch"] != text:
                        raise SearchError(f"{journal.path}: error: record {i} holds a different architecture "
                                          "than this search proposes; the journal belongs to another search "
                                          "(other seed, strategy or settings)")
                    results[i] = evals[i]
                elif text in first:
                    results[i] = _duplicate(base, first[text], journal)
                elif text in waiting:
                    waiting[text].append(i)
                else:
                    waiting[text] = [i]
                    inf = grammar.architecture(prop.tree).infer(shape)
                    base.update(params=inf.params, flops=inf.flops, activations=inf.activations)
                    results[i] = base
                    evaluator.submit(Job(str(i), evaluate, dict(common, arch=text, train=config.train())))
            for outcome in evaluator.results():
                i = int(outcome.key)
                result = outcome.result or {}
                record = dict(results[i], status=outcome.status, reason=outcome.reason,
                              metrics=result.get("metrics", {}), seconds=round(outcome.seconds, 3),
                              timing={k: round(v, 3) for k, v in result.get("timing", {}).items()})
                journal.append(record)
                fresh += 1
                train_seconds += result.get("timing", {}).get("train", 0.0)
                results[i] = record
                first.setdefault(record["arch"], record)
                for j in waiting.get(record["arch"], [])[1:]:
                    results[j] = _duplicate(dict(results[j] if j in results else {}, index=j, kind="eval",
                                                 arch=texts[j], grammar_hash=grammar.hash, seed=config.seed,
                                                 strategy=config.strategy, origin=batch[j - index].origin,
                                                 parent=batch[j - index].parent), record, journal)
            for k, prop in enumerate(batch):
                record = results[index + k]
                fit = _fitness(record)
                strategy.observe(index + k, prop.tree, fit)
                progress.done = index + k + 1
                if fit is not None and (progress.best is None or fit > progress.best):
                    progress.best = fit
                if on_progress:
                    on_progress(progress)
            index += len(batch)

        records = journal.records()
        final = next((r for r in records if r.get("kind") == "final"), None)
        evaluated = sorted((r for r in records if r.get("kind", "eval") == "eval"), key=lambda r: r["index"])
        best = _best(evaluated)
        if final is None and best is not None:
            evaluator.submit(Job("final", final_test, dict(common, arch=best["arch"],
                                                           train=config.train(config.final_epochs))))
            for outcome in evaluator.results():
                result = outcome.result or {}
                final = {"index": config.budget, "kind": "final", "arch": best["arch"], "of": best["index"],
                         "grammar_hash": grammar.hash, "seed": config.seed, "status": outcome.status,
                         "reason": outcome.reason, "metrics": result.get("metrics", {}),
                         "seconds": round(outcome.seconds, 3),
                         "timing": {k: round(v, 3) for k, v in result.get("timing", {}).items()}}
                journal.append(final)
                train_seconds += result.get("timing", {}).get("train", 0.0)
    finally:
        if own:
            evaluator.close()

    from .report import write_outputs

    return write_outputs(out, config, grammar, shape, data.num_classes, evaluated, final,
                         wall=time.monotonic() - t_start, train_seconds=train_seconds, fresh=fresh)


def _duplicate(base: dict, original: dict, journal: Journal) -> dict:
    record = dict(base, status=original["status"], reason=original.get("reason"),
                  metrics=original.get("metrics", {}), params=original.get("params"),
                  flops=original.get("flops"), activations=original.get("activations"), seconds=0.0,
                  duplicate_of=original["index"])
    journal.append(record)
    return record


def _best(records: list[dict]) -> dict | None:
    ok = [r for r in records if _fitness(r) is not None]
    return max(ok, key=lambda r: (_fitness(r), -r["index"])) if ok else None


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
