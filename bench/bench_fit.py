"""Do learned rule probabilities help? Samples of a fitted grammar against samples of einspace.

1. A random search of ``--rs-budget`` evaluations (default 60) over einspace on digits.
2. ``einc fit`` on its journal: the ``--top`` best (default 10), prior strength ``--strength``.
3. ``--samples`` architectures (default 20) drawn and trained from the fitted grammar, and as
   many from einspace (a fresh seed, not the search's samples), with the same resource budgets
   and training.

Prints the mean validation accuracy of each with a 95% t-interval, side by side, and the
failure counts. Everything lands in ``--out`` (each search folder keeps its journal), and a
finished stage is reused when the bench is run again with the same ``--out``.

    python bench/bench_fit.py                                    # the full size: 100 trainings
    python bench/bench_fit.py --rs-budget 20 --samples 8 --epochs 2 --out runs/bench_fit_small
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path


def _interval(xs: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% t-interval (nan for fewer than 2 values)."""
    if not xs:
        return float("nan"), float("nan")
    mean = statistics.fmean(xs)
    if len(xs) < 2:
        return mean, float("nan")
    try:
        from scipy.stats import t

        q = float(t.ppf(0.975, len(xs) - 1))
    except ImportError:  # scipy comes with scikit-learn; 1.96 is the large-sample value
        q = 1.96
    return mean, q * statistics.stdev(xs) / math.sqrt(len(xs))


def _evaluations(out: Path) -> list[dict]:
    from einc.runtime.journal import Journal

    return [r for r in Journal(out / "journal.jsonl").records() if r.get("kind", "eval") == "eval"]


def _search(args, out: Path, strategy: str, grammar: str, budget: int, seed: int) -> list[dict]:
    from einc.runtime.search import SearchConfig, run_search

    done = _evaluations(out) if (out / "journal.jsonl").exists() else []
    if len(done) >= budget and (out / "summary.json").exists():
        print(f"  reusing {out} ({len(done)} evaluations)", flush=True)
        return done
    t0 = time.monotonic()
    config = SearchConfig(grammar=grammar, data=args.data, strategy=strategy, budget=budget, epochs=args.epochs,
                          final_epochs=1, batch_size=args.batch_size, seed=seed, time_limit=args.time_limit,
                          workers=args.workers, max_flops=args.max_flops, max_params=args.max_params)
    run_search(config, out, resume=(out / "config.json").exists())
    print(f"  {strategy} on {grammar}: {budget} evaluations in {time.monotonic() - t0:.0f} s", flush=True)
    return _evaluations(out)


def _scores(records: list[dict]) -> tuple[list[float], int]:
    ok = [r["metrics"]["val_acc"] for r in records if r.get("status") == "ok"
          and isinstance(r.get("metrics", {}).get("val_acc"), (int, float))]
    return ok, sum(r.get("status") != "ok" for r in records)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rs-budget", type=int, default=60, help="evaluations of the random search fitted on")
    ap.add_argument("--samples", type=int, default=20, help="architectures trained from each grammar")
    ap.add_argument("--top", type=int, default=10, help="einc fit --top")
    ap.add_argument("--strength", type=float, default=10.0, help="einc fit --strength")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-flops", type=int, default=30_000_000, help="per-sample budget, for every search")
    ap.add_argument("--max-params", type=int, default=2_000_000)
    ap.add_argument("--time-limit", type=float, default=120.0, help="seconds per evaluation (else failed)")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--data", default="digits")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/bench_fit")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()

    print(f"1. random search over einspace: {args.rs_budget} evaluations, {args.epochs} epochs", flush=True)
    rs = _search(args, out / "rs", "rs", "einspace", args.rs_budget, args.seed)

    print(f"2. einc fit --top {args.top} --strength {args.strength:g}", flush=True)
    tuned = out / "tuned.ein"
    fit = subprocess.run([sys.executable, "-m", "einc.cli", "fit", str(out / "rs"), "-o", str(tuned),
                          "--top", str(args.top), "--strength", str(args.strength)], capture_output=True, text=True,
                         check=False)
    print("\n".join("  " + line for line in (fit.stdout + fit.stderr).strip().splitlines()), flush=True)
    if fit.returncode:
        sys.exit(f"einc fit failed (exit {fit.returncode})")

    print(f"3. {args.samples} samples from each grammar (same budgets and training)", flush=True)
    fitted = _search(args, out / "sample_fitted", "sample", str(tuned), args.samples, args.seed + 1)
    base = _search(args, out / "sample_einspace", "sample", "einspace", args.samples, args.seed + 1)

    rows = []
    for name, recs in [("einspace", base), ("fitted", fitted)]:
        scores, failed = _scores(recs)
        mean, half = _interval(scores)
        rows.append({"grammar": name, "samples": len(recs), "ok": len(scores), "failed": failed,
                     "trained": sum("duplicate_of" not in r for r in recs),
                     "mean_val_acc": mean, "ci95": half,
                     "median_val_acc": statistics.median(scores) if scores else float("nan")})
    rs_scores, _ = _scores(rs)
    print()
    print(f"random search ({len(rs)} evaluations, einspace): best val_acc {max(rs_scores, default=float('nan')):.4f}, "
          f"mean {statistics.fmean(rs_scores) if rs_scores else float('nan'):.4f}")
    print(f"{'samples from':<14} {'ok/samples':>10} {'distinct':>8} {'mean val_acc':>13} {'95% interval':>21} "
          f"{'median':>8}")
    for r in rows:
        lo, hi = r["mean_val_acc"] - r["ci95"], r["mean_val_acc"] + r["ci95"]
        print(f"{r['grammar']:<14} {r['ok']:>4}/{r['samples']:<5} {r['trained']:>8} {r['mean_val_acc']:>13.4f} "
              f"{f'[{lo:.4f}, {hi:.4f}]':>21} {r['median_val_acc']:>8.4f}")
    diff = rows[1]["mean_val_acc"] - rows[0]["mean_val_acc"]
    print(f"fitted - einspace: {diff:+.4f} (a repeated sample counts once per draw, trained once; failed "
          "evaluations are left out of the means; "
          f"{time.monotonic() - t0:.0f} s in all)")
    (out / "bench_fit.json").write_text(json.dumps({"args": vars(args), "rows": rows, "difference": diff}, indent=2)
                                        + "\n")


if __name__ == "__main__":
    main()
