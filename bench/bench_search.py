"""How busy a search keeps the hardware: today's settings against the best ones, in one run.

    python bench/bench_search.py            # the README digits search + a CIFAR-sized synthetic task
    python bench/bench_search.py --quick    # a short CPU-only smoke run: budget 2, 1 epoch, 400 samples
    python bench/bench_search.py --tasks digits --best-workers 8

Each task runs twice through the public API (``einc.runtime.search.run_search``):

* baseline: ``--workers 1``, eager steps, float32 (``amp=False, graphs=False``): the behaviour
  before issue 12;
* best: ``--best-workers`` workers (default: 2 per visible GPU, 2 on a CPU), ``amp`` and ``graphs``
  on auto (None: bf16 where a candidate's FLOPs pay for it, CUDA graphs on CUDA).

Tasks: "digits" is the README's search (regularised evolution seeded with
``examples/resnet_small.arch``, budget 24, population 8, tournament 3, 5 epochs, batch 64, at most
3e7 FLOPs, seed 2); "cifar" is a synthetic 3x32x32 10-class task (20k/2k/2k samples, a class
pattern plus noise, so there is something to learn) written as a .npz into a temporary folder.

Printed side by side, per task: evaluations per minute (evaluations finished over the time from
the call to the last one), seconds to the first finished evaluation, GPU busy fraction (NVML
through ``nvidia-ml-py`` when importable, else ``torch.cuda.utilization``, else n/a) over the run
and over the evaluation phase (first to last finished evaluation), the best validation accuracy,
the test accuracy of the final retrain, and which step/precision the candidates used (from the
journal's ``metrics.step`` and ``metrics.amp``); then the ratios best / baseline.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Self

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

DIGITS = {"data": "digits", "strategy": "re", "budget": 24, "population": 8, "tournament": 3, "epochs": 5,
          "batch_size": 64, "max_flops": 30_000_000, "time_limit": 120.0, "seed": 2}
CIFAR = {"strategy": "re", "budget": 24, "population": 8, "tournament": 3, "epochs": 3, "batch_size": 128,
         "max_flops": 300_000_000, "time_limit": 300.0, "seed": 2}
QUICK = {"budget": 2, "population": 2, "tournament": 2, "epochs": 1, "final_epochs": 1, "batch_size": 64,
         "time_limit": None}
QUICK_SIZES = (400, 100, 100)  # --quick: the digits task cut to this many samples, the synthetic one made so


def digits_subset(path: Path, sizes: tuple[int, int, int] = QUICK_SIZES) -> Path:
    """The first ``sizes`` samples of each split of the "digits" task, as a .npz (un-normalised)."""
    from einc.runtime.data import load_data

    d = load_data("digits", normalise=False)
    arrays = {}
    top = int(d.train_y[:sizes[0]].max())
    for split, n in zip(("train", "valid", "test"), sizes, strict=True):
        x, y = getattr(d, f"{split}_x"), getattr(d, f"{split}_y")
        keep = np.flatnonzero(y <= top)[:n]  # no class the cut training split lacks
        arrays[f"{split}_x"], arrays[f"{split}_y"] = x[keep], y[keep]
    np.savez(path, **arrays)
    return path


# --------------------------------------------------------------------------- data


def synthetic_cifar(path: Path, sizes: tuple[int, int, int] = (20_000, 2_000, 2_000), classes: int = 10,
                    seed: int = 0) -> Path:
    """A learnable 3x32x32 task: each class a fixed random pattern, each sample pattern + noise."""
    rng = np.random.default_rng(seed)
    patterns = rng.normal(size=(classes, 3, 32, 32)).astype(np.float32)
    arrays = {}
    for split, n in zip(("train", "valid", "test"), sizes, strict=True):
        y = rng.integers(0, classes, size=n)
        x = 0.35 * patterns[y] + rng.normal(size=(n, 3, 32, 32)).astype(np.float32)
        arrays[f"{split}_x"], arrays[f"{split}_y"] = x.astype(np.float32), y.astype(np.int64)
    np.savez(path, **arrays)
    return path


# --------------------------------------------------------------------------- GPU busy sampling


class BusySampler:
    """Samples GPU utilisation (percent of time a kernel ran) every ``period`` s on a thread."""

    def __init__(self, period: float = 0.2) -> None:
        self.period, self.samples, self.source = period, [], "n/a"
        self._read = self._probe()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _probe(self):
        try:
            import torch

            if not torch.cuda.is_available():
                return None
            count = torch.cuda.device_count()
        except Exception:  # noqa: BLE001  no usable torch/CUDA: no busy figure
            return None
        try:
            import pynvml  # nvidia-ml-py

            pynvml.nvmlInit()
            # NVML counts all GPUs of the machine; torch's order follows CUDA_VISIBLE_DEVICES.
            handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())][:count]
            self.source = "NVML"
            return lambda: statistics.fmean(pynvml.nvmlDeviceGetUtilizationRates(h).gpu for h in handles)
        except Exception:  # noqa: BLE001, S110  no nvidia-ml-py or no NVML: try torch's reader
            pass
        try:
            torch.cuda.utilization(0)
            self.source = "torch.cuda.utilization"
            return lambda: statistics.fmean(torch.cuda.utilization(i) for i in range(count))
        except Exception:  # noqa: BLE001  torch.cuda.utilization needs pynvml too
            return None

    def _loop(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):  # a missed sample is only a missed sample
                self.samples.append((time.monotonic(), float(self._read())))
            self._stop.wait(self.period)

    def __enter__(self) -> Self:
        if self._read is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def mean(self, start: float | None = None, end: float | None = None) -> float | None:
        """Mean busy fraction (0..1) of the samples in [start, end]; None when there are none."""
        picked = [u for t, u in self.samples if (start is None or t >= start) and (end is None or t <= end)]
        return statistics.fmean(picked) / 100 if picked else None


# --------------------------------------------------------------------------- one search


class JournalWatch:
    """Notes when each evaluation record appears in the journal (polling; independent of the scheduler)."""

    def __init__(self, path: Path, period: float = 0.05) -> None:
        self.path, self.period, self.times = path, period, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _count(self) -> int:
        try:
            lines = self.path.read_text().splitlines()
        except OSError:
            return 0
        n = 0
        for line in lines:
            try:
                if json.loads(line).get("kind", "eval") == "eval":
                    n += 1
            except ValueError:
                pass
        return n

    def _loop(self) -> None:
        while not self._stop.is_set():
            n = self._count()
            now = time.monotonic()
            self.times.extend([now] * (n - len(self.times)))
            self._stop.wait(self.period)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._loop_once()

    def _loop_once(self) -> None:
        n = self._count()
        self.times.extend([time.monotonic()] * (n - len(self.times)))


def search_config(**kwargs):
    """A SearchConfig from ``kwargs``, dropping (with a note) fields this checkout's SearchConfig lacks."""
    from einc.runtime.search import SearchConfig

    known = {f.name for f in dataclasses.fields(SearchConfig)}
    missing = sorted(k for k in kwargs if k not in known)
    if missing:
        print(f"note: SearchConfig has no {', '.join(missing)} field yet; running without it", file=sys.stderr)
    return SearchConfig(**{k: v for k, v in kwargs.items() if k in known})


def run_one(settings: dict, out: Path) -> dict:
    from einc.runtime.search import run_search

    config = search_config(**settings)
    journal = out / "journal.jsonl"
    with BusySampler() as busy, JournalWatch(journal) as watch:
        t0 = time.monotonic()
        summary = run_search(config, out)
        wall = time.monotonic() - t0
    records = [json.loads(line) for line in journal.read_text().splitlines() if line.strip()]
    evals = [r for r in records if r.get("kind", "eval") == "eval"]
    fresh = [r for r in evals if r.get("duplicate_of") is None]
    ok = [r for r in fresh if r.get("status") == "ok"]
    final = next((r for r in records if r.get("kind") == "final"), None)
    times = watch.times
    last = times[-1] if times else t0 + wall
    return {
        "evaluations": len(evals), "trained": len(fresh), "failed": len(fresh) - len(ok),
        "evals_per_min": 60 * len(evals) / (last - t0) if last > t0 else None,
        "first_eval_s": times[0] - t0 if times else None,
        "wall_s": wall,
        "busy_run": busy.mean(t0, t0 + wall), "busy_eval": busy.mean(times[0], last) if times else None,
        "busy_source": busy.source,
        "best_val": max((r["metrics"].get("val_acc", 0.0) for r in ok), default=None),
        "test_acc": (final or {}).get("metrics", {}).get("test_acc"),
        "graph_steps": sum(r["metrics"].get("step") == "graph" for r in ok),
        "amp_on": sum(bool(r["metrics"].get("amp")) for r in ok),
        "graph_errors": sorted({r["metrics"]["graph_error"] for r in ok if r["metrics"].get("graph_error")}),
        "summary_notes": (summary or {}).get("notes", []),
    }


# --------------------------------------------------------------------------- report


def _fmt(value, kind: str) -> str:
    if value is None:
        return "n/a"
    if kind == "pct":
        return f"{100 * value:.1f}%"
    if kind == "acc":
        return f"{100 * value:.1f}%"
    if kind == "s":
        return f"{value:.1f}s"
    return f"{value:.2f}"


ROWS = [("evaluations / minute", "evals_per_min", "x"), ("first evaluation after", "first_eval_s", "s"),
        ("GPU busy, whole run", "busy_run", "pct"), ("GPU busy, evaluation phase", "busy_eval", "pct"),
        ("best validation accuracy", "best_val", "acc"), ("test accuracy (final)", "test_acc", "acc"),
        ("wall time", "wall_s", "s")]


def print_task(name: str, base: dict, best: dict, labels: tuple[str, str]) -> None:
    print(f"\n== {name}")
    print(f"{'':30s}{labels[0]:>22s}{labels[1]:>22s}{'best / baseline':>18s}")
    for title, key, kind in ROWS:
        a, b = base.get(key), best.get(key)
        ratio = f"{b / a:.2f}x" if isinstance(a, float) and isinstance(b, float) and a > 0 else ""
        print(f"{title:30s}{_fmt(a, kind):>22s}{_fmt(b, kind):>22s}{ratio:>18s}")
    for label, r in zip(labels, (base, best), strict=True):
        line = (f"{label}: {r['evaluations']} evaluations ({r['trained']} trained, {r['failed']} failed), "
                f"CUDA-graph steps in {r['graph_steps']}, bf16 in {r['amp_on']}; busy from {r['busy_source']}")
        print("  " + line)
        for err in r["graph_errors"]:
            print(f"    capture fell back to eager: {err}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a short CPU-only smoke run (tiny budgets and data)")
    ap.add_argument("--tasks", default="digits,cifar", help="comma-separated: digits, cifar")
    ap.add_argument("--best-workers", type=int, default=None,
                    help="workers of the best setting (default: 2 per visible GPU, 2 on a CPU)")
    ap.add_argument("--device", default=None, help='e.g. "cpu", "cuda" (default: auto; --quick: cpu)')
    ap.add_argument("--json", type=Path, default=None, help="also write every figure to this file")
    args = ap.parse_args(argv)

    device = "cpu" if args.quick else args.device
    gpus = 0
    if device != "cpu":
        import torch

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    workers = args.best_workers or (2 * gpus if gpus else 2)
    seed_text = (ROOT / "examples" / "resnet_small.arch").read_text()
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in ("digits", "cifar")]
    if unknown:
        ap.error(f"unknown task {unknown[0]!r}; choose from digits, cifar")

    baseline = {"workers": 1, "amp": False, "graphs": False}
    best = {"workers": workers, "amp": None, "graphs": None}
    labels = ("baseline (1 worker)", f"best ({workers} workers)")
    print(f"device: {device or 'auto'} ({gpus} GPU{'s' if gpus != 1 else ''}); baseline: workers 1, eager, fp32; "
          f"best: workers {workers}, graphs auto, amp auto" + ("; --quick" if args.quick else ""))
    if not args.quick:  # a smoke run's timings are no figures: it skips the warm-up
        # Whatever runs first would pay for cold disk caches (torch's libraries, .pyc files): warm
        # them in a throwaway process, as a worker would find them, before anything is timed.
        subprocess.run([sys.executable, "-c",
                        "import torch, einc, einc.runtime.candidate, einc.runtime.train, sklearn"], check=False)
    results = {}
    with tempfile.TemporaryDirectory(prefix="einc-bench-search-") as tmp:
        tmp = Path(tmp)
        for task in tasks:
            if task == "digits":
                common = dict(DIGITS)
                if args.quick:
                    common["data"] = str(digits_subset(tmp / "digits_subset.npz"))
            else:
                sizes = QUICK_SIZES if args.quick else (20_000, 2_000, 2_000)
                common = dict(CIFAR, data=str(synthetic_cifar(tmp / "cifar_synthetic.npz", sizes)))
            common.update(seeds=(seed_text,), seed_names=("resnet_small.arch",), device=device)
            if args.quick:
                common.update(QUICK)
            runs = {}
            for label, setting in (("baseline", baseline), ("best", best)):
                runs[label] = run_one(dict(common, **setting), tmp / f"{task}-{label}")
            results[task] = runs
            print_task(f"{task}: " + ("README digits search" if task == "digits" else "synthetic 3x32x32, 10 classes"),
                       runs["baseline"], runs["best"], labels)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
