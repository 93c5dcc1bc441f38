"""Ray's cost per evaluation: the same search with local worker processes and with ``--ray``, side by side.

    python bench/bench_ray.py                       # digits10, random search, 12 evaluations, 2 workers
    python bench/bench_ray.py --budget 40 --workers 4 --epochs 3 --repeats 3
    python bench/bench_ray.py --address HEAD:6379   # against a running cluster instead of a local runtime

Both runs go through ``run_search`` with the same settings; random search ("rs") proposes the
same architectures whatever order results come back in, so both train exactly the same
candidates. Runs alternate (local, ray, local, ray, ...) and medians are printed, because a
shared machine's load drifts. Figures per backend:

* evaluations/minute in the steady state: evaluations finished after every worker delivered its
  first one, over the time from that moment to the last result (worker start-up excluded);
* evaluations/minute end to end (from the call that creates the evaluator to the summary; the
  Ray runtime itself is started once, before, and its start-up is printed separately);
* overhead per evaluation (median, first evaluation of each worker excluded): an evaluation's
  seconds (dispatch to result) less the build and train time measured inside the job, i.e.
  shipping the job and its data, and the result back.

The ratio ray/local of the steady-state rate is the headline (goal: >= 0.95, i.e. Ray's overhead
per evaluation <= 5%); on a busy machine it drifts with the load, so the paired ratios (the same
candidate's evaluation and training times under both backends, median over candidates) and the
overhead per evaluation are printed too.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def run(backend: str, args, out: Path) -> dict:
    from einc.runtime.search import SearchConfig, run_search

    config = SearchConfig(data=args.data, strategy="rs", budget=args.budget, workers=args.workers, epochs=args.epochs,
                          batch_size=args.batch_size, max_params=args.max_params, max_flops=args.max_flops,
                          seed=args.seed, device="cpu")
    t0 = time.time()
    evaluator = None
    if backend == "ray":
        from einc.runtime.cluster import RayEvaluator

        evaluator = RayEvaluator(args.workers, address=args.address)
    try:
        run_search(config, out, evaluator=evaluator)
    finally:
        if evaluator is not None:
            evaluator.close()
    total = time.time() - t0
    records = [json.loads(line) for line in (out / "journal.jsonl").read_text().splitlines()]
    evals = sorted((r for r in records if r.get("kind") == "eval" and "duplicate_of" not in r),
                   key=lambda r: r["finished"])
    # steady state: after every worker has delivered once (worker start-up and first-job warm-up excluded)
    firsts = {id(next(r for r in evals if r["worker"] == w)) for w in {r["worker"] for r in evals}}
    w = len(firsts)
    later = [r for r in evals if id(r) not in firsts]
    steady = 60 * (len(evals) - w) / (evals[-1]["finished"] - evals[w - 1]["finished"])
    outside = [r["seconds"] - r["timing"].get("build", 0) - r["timing"].get("train", 0) for r in later]
    return {"phase_rate": steady, "total_rate": 60 * len(evals) / total, "first_s": evals[0]["finished"] - t0,
            "overhead_pct": 100 * statistics.median(outside) / statistics.median(r["seconds"] for r in later),
            "overhead_ms": 1000 * statistics.median(outside), "eval_s": statistics.mean(r["seconds"] for r in later),
            "failed": sum(r["status"] != "ok" for r in evals),
            "archs": [r["arch"] for r in sorted(evals, key=lambda r: r["index"])],
            "per_arch": {r["arch"]: (r["seconds"], r["timing"].get("train", 0.0)) for r in later}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="digits10")
    p.add_argument("--budget", type=int, default=12)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-params", type=int, default=50_000)
    p.add_argument("--max-flops", type=int, default=5_000_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--address", default="local", help='"local" (a Ray runtime started here) or HEAD:6379')
    args = p.parse_args()

    import ray

    t = time.time()
    ray.init(address=None if args.address == "local" else args.address, include_dashboard=False,
             log_to_driver=False, logging_level=logging.WARNING)
    ray_start = time.time() - t
    results: dict[str, list[dict]] = {"local": [], "ray": []}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for i in range(args.repeats):
                for backend in ("local", "ray"):
                    r = run(backend, args, Path(tmp) / f"{backend}{i}")
                    results[backend].append(r)
                    print(f"  run {i + 1} {backend:5}: {r['phase_rate']:6.1f} evaluations/min steady, "
                          f"{r['total_rate']:6.1f} end to end, {r['overhead_ms']:6.1f} ms overhead/evaluation, "
                          f"{r['failed']} failed", flush=True)
    finally:
        ray.shutdown()
    same = all(r["archs"] == results["local"][0]["archs"] for rs in results.values() for r in rs)
    keys = ("phase_rate", "total_rate", "first_s", "overhead_ms", "overhead_pct", "eval_s")
    med = {b: {k: statistics.median(r[k] for r in rs) for k in keys} for b, rs in results.items()}
    print(f"\nsearch: rs on {args.data}, {args.budget} evaluations, {args.workers} workers, {args.epochs} epochs, "
          f"batch {args.batch_size}; same candidates in every run: {same}; Ray runtime start {ray_start:.1f}s "
          f"(once, not counted); medians of {args.repeats} runs each")
    print(f"{'':30}{'local':>10}{'ray':>10}{'ray/local':>11}")
    for key, label in (("phase_rate", "evaluations/min (steady)"), ("total_rate", "evaluations/min (end to end)"),
                       ("first_s", "s to the first result"), ("eval_s", "s per evaluation (steady)"),
                       ("overhead_ms", "overhead ms/evaluation"), ("overhead_pct", "overhead % of an evaluation")):
        a, b = med["local"][key], med["ray"][key]
        print(f"{label:30}{a:10.2f}{b:10.2f}" + (f"{b / a:11.3f}" if a else f"{'n/a':>11}"))
    # paired: the same candidate's times under both backends (load drifts less within a pair)
    pairs = [(lr["per_arch"][k], rr["per_arch"][k]) for lr, rr in zip(results["local"], results["ray"], strict=True)
             for k in lr["per_arch"].keys() & rr["per_arch"].keys()]
    for i, label in ((0, "paired: evaluation s"), (1, "paired: training s")):
        ratios = [r[i] / q[i] for q, r in pairs if q[i] > 0]
        print(f"{label:30}{'':20}{statistics.median(ratios):11.3f}  (median over {len(ratios)} candidates)")


if __name__ == "__main__":
    main()
