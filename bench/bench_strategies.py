"""Which search strategy reaches a good network in fewest trainings: RS, RE, RE with --prefilter,
RE with --warmup, BO, and BO with --warmup, side by side on one cheap task over several seeds.

    python bench/bench_strategies.py            # 6 strategies x 5 seeds, budget 30, 2 epochs on digits10
    python bench/bench_strategies.py --quick    # a smoke run: 1 seed, budget 12, 1 epoch, tiny networks
    python bench/bench_strategies.py --seeds 10 --only RE,BO --out runs/strategies   # finished runs are kept

Every search goes through the public path (``einc.runtime.search.run_search``), trains for real on
the embedded 10-class digits (1 x 8 x 8, 1257 training images) with no seed architectures, and
shares one pool of ``--workers`` worker processes. Seed ``s`` is the same for every strategy:
RS, RE, RE+prefilter and BO draw the same first samples and train them identically, so the
strategies differ only where their decisions do. All use the same ``--lag`` (proposal k sees the
results of proposals before k - lag).

Printed: per strategy, the best validation accuracy so far after n trainings (mean over seeds
and its 95% t-interval); the trainings each needs to reach RE's final median best (median over
seeds, and how many seeds got there within the budget); the budgets where a strategy's mean is
below RE's; and the cost per candidate: building the network and training it (worker, from the
journal's timing), proposing it (this process: sampling, mutation, the surrogate) and the
warm-up's proxy scoring. The curves are drawn into ``--plot`` (bench/strategies.png).
Timings on a shared machine are noisy; accuracies are not (the same command gives the same
journals).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

COMMON = {"data": "digits10", "budget": 30, "epochs": 2, "batch_size": 64, "population": 10, "tournament": 3,
          "max_flops": 3_000_000, "max_activations": 100_000, "lag": 2}
QUICK = {"budget": 12, "epochs": 1, "final_epochs": 1, "population": 3, "tournament": 2, "max_params": 50_000,
         "max_flops": 500_000, "max_activations": 20_000}
STRATEGIES = {"RS": {"strategy": "rs"}, "RE": {"strategy": "re"}, "RE+prefilter": {"strategy": "re", "prefilter": 8},
              "RE+warmup": {"strategy": "re", "warmup": "synflow:100"}, "BO": {"strategy": "bo"},
              "BO+warmup": {"strategy": "bo", "warmup": "synflow:100"}}
QUICK_STRATEGIES = {"RE+warmup": {"strategy": "re", "warmup": "synflow:6"}, "RE+prefilter": {"strategy": "re",
                                                                                             "prefilter": 3},
                    "BO+warmup": {"strategy": "bo", "warmup": "synflow:6"}}
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        15: 2.131, 20: 2.086, 30: 2.042}
"""Student's t 97.5% quantile by degrees of freedom (the 95% interval of a mean over seeds)."""


def t975(dof: int) -> float:
    return T975[max(k for k in T975 if k <= dof)] if dof >= 1 else math.nan


def best_so_far(records: list[dict[str, Any]], budget: int) -> list[float]:
    """The best validation accuracy after 1..budget trainings (repeats, which train nothing, skipped;
    a failed training scores nothing); held flat past the last training."""
    curve: list[float] = []
    best = 0.0
    for r in sorted((r for r in records if r.get("kind") == "eval" and "duplicate_of" not in r),
                    key=lambda r: r["index"]):
        acc = r.get("metrics", {}).get("val_acc") if r.get("status") == "ok" else None
        best = max(best, acc) if isinstance(acc, (int, float)) else best
        curve.append(best)
    return (curve + [best] * budget)[:budget]


def mean_interval(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of its 95% t-interval (nan with one value)."""
    m = statistics.fmean(values)
    return m, t975(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else math.nan


def reach(curve: list[float], target: float) -> int | None:
    """Trainings until the best reaches ``target`` (None: not within the budget)."""
    return next((n for n, b in enumerate(curve, 1) if b >= target), None)


def median_reach(hits: list[int | None], budget: int) -> str:
    """Median trainings to the target over seeds, a miss counted as more than the budget."""
    ranks = sorted(budget + 1 if h is None else h for h in hits)
    m = statistics.median(ranks)
    return f">{budget}" if m > budget else f"{m:g}"


class ProposalClock:
    """Seconds this process spends in the scheduler's proposals (strategy decisions), per search."""

    def __init__(self) -> None:
        from einc.runtime.schedule import Scheduler

        self.seconds = 0.0
        original = Scheduler._propose

        @functools.wraps(original)
        def timed(scheduler: Any) -> dict[str, Any]:
            start = time.perf_counter()
            try:
                return original(scheduler)
            finally:
                self.seconds += time.perf_counter() - start

        Scheduler._propose = timed  # type: ignore[method-assign]


def run_one(settings: dict[str, Any], out: Path, evaluator: Any, clock: ProposalClock) -> dict[str, Any]:
    """One search into ``out`` (a finished one is read back, an interrupted one resumed)."""
    from einc.runtime.journal import Journal
    from einc.runtime.search import SearchConfig, run_search

    timing = out / "bench_timing.json"
    if (out / "summary.json").exists() and timing.exists():
        return {"records": Journal(out / "journal.jsonl").records(), **json.loads(timing.read_text())}
    before, start = clock.seconds, time.perf_counter()
    resume = (out / "config.json").exists()
    run_search(SearchConfig(**settings), out, resume=resume, evaluator=evaluator)
    spent = {"propose_seconds": clock.seconds - before, "wall_seconds": time.perf_counter() - start,
             "resumed": resume}
    timing.write_text(json.dumps(spent))
    return {"records": Journal(out / "journal.jsonl").records(), **spent}


def costs(runs: list[dict[str, Any]]) -> dict[str, float]:
    """Seconds per trained candidate: build and train (workers), propose and warm up (this process)."""
    trained = [r for run in runs for r in run["records"] if r.get("kind") == "eval" and "duplicate_of" not in r]
    n = max(1, len(trained))
    warm = sum(r.get("seconds", 0.0) for run in runs for r in run["records"] if r.get("kind") == "warmup")
    return {"build": sum(r.get("timing", {}).get("build", 0.0) for r in trained) / n,
            "train": sum(r.get("timing", {}).get("train", 0.0) for r in trained) / n,
            "propose": sum(run["propose_seconds"] for run in runs) / n, "warmup": warm / n,
            "wall": sum(run["wall_seconds"] for run in runs)}


def report(curves: dict[str, list[list[float]]], cost: dict[str, dict[str, float]], budget: int) -> str:
    lines = []
    marks = sorted({n for n in (1, 5, 10, 15, 20, 25, 30, 40, 50, budget) if n <= budget})
    lines.append("best validation accuracy after n trainings: mean +- 95% interval over seeds")
    lines.append(f"{'strategy':<14}" + "".join(f"{'n=' + str(n):>15}" for n in marks))
    for name, cs in curves.items():
        cells = []
        for n in marks:
            m, h = mean_interval([c[n - 1] for c in cs])
            cells.append(f"{100 * m:6.2f}" + ("" if math.isnan(h) else f" +-{100 * h:5.2f}"))
        lines.append(f"{name:<14}" + "".join(f"{c:>15}" for c in cells))
    if "RE" in curves:
        target = statistics.median(c[-1] for c in curves["RE"])
        re_mean = [statistics.fmean(c[n] for c in curves["RE"]) for n in range(budget)]
        lines.append("")
        lines.append(f"trainings to reach RE's final median best ({100 * target:.2f}%): median over seeds "
                     "(seeds that reached it within the budget)")
        for name, cs in curves.items():
            hits = [reach(c, target) for c in cs]
            ratio = ""
            med = median_reach(hits, budget)
            re_med = median_reach([reach(c, target) for c in curves["RE"]], budget)
            if not med.startswith(">") and not re_med.startswith(">"):
                ratio = f"   {float(med) / float(re_med):.2f}x RE's"
            lines.append(f"  {name:<14}{med:>5}   ({sum(h is not None for h in hits)}/{len(hits)}){ratio}")
        lines.append("")
        lines.append("budgets where a strategy's mean best is below RE's (the floor: none):")
        for name, cs in curves.items():
            if name == "RE":
                continue
            below = [n + 1 for n in range(budget) if statistics.fmean(c[n] for c in cs) < re_mean[n] - 1e-12]
            lines.append(f"  {name:<14}" + (", ".join(map(str, below)) if below else "none"))
    lines.append("")
    lines.append("seconds per trained candidate: build and train (in a worker), propose and warm up (this process)")
    lines.append(f"{'strategy':<14}{'build':>8}{'train':>8}{'build/train':>13}{'propose':>9}{'warm-up':>9}"
                 f"{'search wall':>13}")
    for name, c in cost.items():
        ratio = c["build"] / c["train"] if c["train"] else math.nan
        lines.append(f"{name:<14}{c['build']:8.3f}{c['train']:8.3f}{ratio:13.3f}{c['propose']:9.3f}"
                     f"{c['warmup']:9.3f}{c['wall'] / 60:11.1f} m")
    return "\n".join(lines)


def plot(curves: dict[str, list[list[float]]], budget: int, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs = list(range(1, budget + 1))
    for name, cs in curves.items():
        stats = [mean_interval([c[n] for c in cs]) for n in range(budget)]
        mean = [100 * m for m, _ in stats]
        line, = ax.plot(xs, mean, label=name, lw=1.8)
        if len(cs) > 1:
            ax.fill_between(xs, [max(0.0, 100 * (m - h)) for m, h in stats],  # an accuracy's bounds
                            [min(100.0, 100 * (m + h)) for m, h in stats],
                            color=line.get_color(), alpha=0.12, lw=0)
    if "RE" in curves:
        ax.axhline(100 * statistics.median(c[-1] for c in curves["RE"]), color="grey", ls="--", lw=1,
                   label="RE's final median")
    ax.set_xlabel("trainings")
    ax.set_ylabel("best validation accuracy so far (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 seed, budget 12, 1 epoch, tiny networks")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per strategy [default: 5; --quick 1]")
    parser.add_argument("--budget", type=int, default=None, help="trainings per search [default: 30; --quick 12]")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per training [default: 2; --quick 1]")
    parser.add_argument("--workers", type=int, default=2, help="worker processes shared by every search")
    parser.add_argument("--only", default=None, help="comma-separated strategies to run (of RS,RE,RE+prefilter,"
                                                     "RE+warmup,BO,BO+warmup)")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for the searches (kept; a rerun reuses finished ones) [default: temporary]")
    parser.add_argument("--plot", type=Path, default=ROOT / "bench" / "strategies.png")
    parser.add_argument("--json", type=Path, default=None, help="write the curves and costs here")
    args = parser.parse_args(argv)

    from einc.runtime.candidate import prepare
    from einc.runtime.search import SearchConfig, threads_per_worker
    from einc.runtime.workers import LocalEvaluator

    settings = dict(COMMON, **(QUICK if args.quick else {}))
    for key in ("budget", "epochs"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    seeds = args.seeds or (1 if args.quick else 5)
    strategies = dict(STRATEGIES, **(QUICK_STRATEGIES if args.quick else {}))
    if args.only:
        unknown = set(args.only.split(",")) - set(strategies)
        if unknown:
            parser.error(f"unknown strategies {', '.join(sorted(unknown))}; choose from {', '.join(strategies)}")
        strategies = {k: v for k, v in strategies.items() if k in args.only.split(",")}
    budget = settings["budget"]
    shown = ", ".join(f"{k}={v}" for k, v in settings.items())
    print(f"{len(strategies)} strategies x {seeds} seeds: {shown}, workers={args.workers}", flush=True)

    base = SearchConfig(**settings)
    evaluator = LocalEvaluator(workers=args.workers, threads=threads_per_worker(args.workers),
                               prepare=functools.partial(prepare, **base.job_context(), workers=args.workers))
    clock = ProposalClock()
    curves: dict[str, list[list[float]]] = {}
    cost: dict[str, dict[str, float]] = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.out or Path(tmp)
        try:
            evaluator.start()
            for name, extra in strategies.items():
                runs = []
                for seed in range(seeds):
                    folder = root / f"{name.replace('+', '-')}-seed{seed}"
                    runs.append(run_one(dict(settings, **extra, seed=seed, workers=args.workers), folder, evaluator,
                                        clock))
                    print(f"  {name} seed {seed}: best {100 * best_so_far(runs[-1]['records'], budget)[-1]:.2f}% "
                          f"({runs[-1]['wall_seconds']:.0f} s)", flush=True)
                curves[name] = [best_so_far(run["records"], budget) for run in runs]
                cost[name] = costs(runs)
        finally:
            evaluator.close()
    print(f"\n{report(curves, cost, budget)}")
    print(f"\nwhole run: {(time.perf_counter() - started) / 60:.1f} min")
    title = (f"{', '.join(f'{k}={v}' for k, v in settings.items() if k in ('data', 'budget', 'epochs', 'lag'))}; "
             f"{seeds} seeds, mean and 95% interval")
    plot(curves, budget, args.plot, title)
    print(f"plot: {args.plot}")
    if args.json:
        args.json.write_text(json.dumps({"settings": settings, "seeds": seeds, "curves": curves, "costs": cost},
                                        indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
