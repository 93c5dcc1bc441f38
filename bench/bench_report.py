"""Does report.html stay usable at 10,000 evaluations? Size, build time and Chromium load time.

Fakes search folders (config.json and journal.jsonl, no training) of ``--sizes`` evaluations:
regularised evolution from the digits seed, each architecture a real mutation of a recent one
(einspace, so their texts and counts are what a search journals), a few failures and repeats,
8 workers' timings. For each size it prints, side by side:

* the page's size, and what the architectures' texts would weigh uncompressed;
* the time to build it from nothing (``einc report OUT``) and a live rewrite after one more
  evaluation (the search's, with its cache);
* headless Chromium's time to a drawn page (the script's ``performance.now()`` when it has drawn
  everything: charts, table, drawing), the time it then takes to inflate the architectures'
  texts (in the background: the page is usable meanwhile), and the whole
  ``chromium --dump-dom`` process, next to the same for the smallest size.

A rewrite re-reads the journal and counts only new architectures' alternatives (the cache);
building from nothing counts up to ``report_html.SAMPLE`` of them (about 16 ms each today).

    python bench/bench_report.py                       # sizes 100,1000,10000 (about 2-4 minutes)
    python bench/bench_report.py --sizes 100,2000 --out /tmp/bench_report
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import subprocess
import sys
import time
import zlib
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REASONS = ("OutOfMemory: CUDA out of memory (tried to allocate 2.00 GiB)", "TrainError: the loss is NaN at epoch 2",
           "TimeLimit: training took more than 600 s", "RuntimeError: shape mismatch in linear (at node /1/0/2)")


def fake_search(out: Path, n: int, seed: int = 0, workers: int = 8) -> None:
    """A finished-looking search of ``n`` evaluations in ``out`` (written without fsync: it is a fake)."""
    from einc.mutate import mutate
    from einc.notation import show
    from einc.runtime.candidate import cached_grammar
    from einc.runtime.search import SearchConfig
    from einc.sample import Budget, Sampler

    text = (ROOT / "examples" / "resnet_small.arch").read_text()
    config = SearchConfig(data="digits", strategy="re", seeds=(text,), seed_names=("resnet_small",), budget=n,
                          population=100, tournament=10, workers=workers, max_flops=30_000_000,
                          max_activations=300_000, seed=seed)
    g = cached_grammar("einspace")
    shape = (2, 8, 8)
    sampler = Sampler(g.table, shape, Budget(max_flops=30_000_000, max_activations=300_000))
    rng = random.Random(seed)
    trees = [g.parse(text, shape).tree]
    first: dict[str, dict] = {}
    free = [1_800_000_000.0] * workers  # when each worker is free (epoch seconds)
    lines = [{"kind": "session", "started": free[0], "ready": free[0] + 2, "workers": workers, "resumed": False}]
    for index in range(n):
        parent = rng.randrange(max(0, len(trees) - 100), len(trees)) if index else None
        tree = trees[0] if parent is None else mutate(trees[parent], sampler, rng)
        trees.append(tree)
        arch = show(tree)
        base = {"index": index, "arch": arch, "origin": "seed" if parent is None else "mutation",
                "parent": parent}
        lines.append({**base, "kind": "proposal", "retries": 0})
        inf = g.architecture(tree).infer(shape)
        w = min(range(workers), key=free.__getitem__)
        seconds = rng.lognormvariate(3.5, 0.7)
        start, free[w] = free[w], free[w] + seconds
        failed = rng.random() < 0.05
        acc = 0.6 + 0.35 * (index / n) ** 0.3 * (zlib.crc32(arch.encode()) % 1000) / 1000
        record = {**base, "kind": "eval", "grammar_hash": g.hash, "seed": seed, "strategy": "re",
                  "params": inf.params, "flops": inf.flops, "activations": inf.activations,
                  "status": "failed" if failed else "ok", "reason": rng.choice(REASONS) if failed else None,
                  "metrics": {} if failed else {"val_acc": round(acc, 4), "train_loss": round(2 - 2 * acc, 4),
                                                "epochs": 8},
                  "seconds": round(seconds, 3), "timing": {"build": 0.05, "train": round(seconds - 0.05, 3)},
                  "started": round(start, 3), "finished": round(start + seconds, 3), "worker": str(w)}
        if arch in first:  # a repeat reuses its original's result and trains nothing
            o = first[arch]
            free[w] = start
            record.update({k: o[k] for k in ("status", "reason", "metrics")}, duplicate_of=o["index"], seconds=0.0,
                          timing={}, started=start, finished=start, worker=None)
        else:
            first[arch] = record
        lines.append(record)
    best = max((r for r in first.values() if r["status"] == "ok"), key=lambda r: r["metrics"]["val_acc"])
    lines.append({"index": n, "kind": "final", "arch": best["arch"], "of": best["index"], "status": "ok",
                  "metrics": {"test_acc": best["metrics"]["val_acc"] - 0.01}, "seconds": 60.0})
    config.budget = len(first)  # the budget counts trainings; repeats train nothing
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(asdict(config), indent=2) + "\n")
    (out / "journal.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))


def chromium_load(path: Path, chromium: str) -> tuple[float, float | None, float | None]:
    """(seconds of the whole chromium --dump-dom process, ms to a drawn page, ms to inflated texts)."""
    t = time.perf_counter()
    dom = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=20000",
                          "--dump-dom", path.resolve().as_uri()], capture_output=True, text=True, timeout=300,
                         check=True).stdout
    whole = time.perf_counter() - t
    drawn = re.search(r'data-rendered="(\d+)"', dom)
    inflated = re.search(r'data-inflated="(\d+)"', dom)
    if re.search(r'id="errors"[^>]*>[^<]', dom):
        sys.exit(f"{path}: the page reported errors: {re.search(r'id=.errors.[^>]*>([^<]*)', dom)[1]}")
    return whole, drawn and float(drawn[1]), inflated and float(inflated[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100,1000,10000", help="evaluations per fake search, comma-separated")
    ap.add_argument("--out", default="runs/bench_report", help="where the fake searches are written (kept)")
    ap.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser"))
    args = ap.parse_args()
    from einc.runtime import report_html
    from einc.runtime.candidate import cached_grammar
    from einc.runtime.search import SearchConfig
    from einc.runtime.trials import folder_records

    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        out = Path(args.out) / f"n{n}"
        t = time.perf_counter()
        if not (out / "journal.jsonl").exists():
            fake_search(out, n)
        faked = time.perf_counter() - t
        t = time.perf_counter()
        config = SearchConfig.load(out / "config.json")
        page = report_html.rebuild(out, config, cached_grammar(config.grammar), (2, 8, 8))
        cold = time.perf_counter() - t
        # a live rewrite: the search's LivePage, whose cache holds what earlier rewrites computed
        live = report_html.LivePage(out, config, config.goal(), cached_grammar(config.grammar), (2, 8, 8))
        live._write(live=False)
        t = time.perf_counter()
        live._write(live=False)
        warm = time.perf_counter() - t
        records = folder_records(out)
        raw = sum(len(r["arch"]) for r in records if r.get("kind") == "eval")
        size = page.stat().st_size
        load = chromium_load(page, args.chromium) if args.chromium else (None, None, None)
        rows.append((n, size, raw, cold, warm, *load))
        print(f"n={n}: faked in {faked:.1f} s", flush=True)
    print(f"\n{'evaluations':>11} {'page MB':>8} {'arch text MB':>12} {'build s':>8} {'rewrite s':>9} "
          f"{'drawn ms':>9} {'inflated ms':>11} {'chromium s':>10} {'vs smallest':>11}")
    base = rows[0][5]
    for n, size, raw, cold, warm, whole, drawn, inflated in rows:
        print(f"{n:>11} {size / 1e6:>8.2f} {raw / 1e6:>12.2f} {cold:>8.2f} {warm:>9.2f} "
              f"{drawn if drawn is not None else '-':>9} {inflated if inflated is not None else '-':>11} "
              f"{whole if whole is not None else float('nan'):>10.2f} "
              f"{(whole / base) if whole and base else float('nan'):>11.2f}")
    if not args.chromium:
        print("(no chromium on PATH: load times not measured; Debian: apt-get install chromium)")


if __name__ == "__main__":
    main()
