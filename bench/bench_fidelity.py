"""Multi-fidelity against single-fidelity regularised evolution at equal training epochs, side by side.

    python bench/bench_fidelity.py                 # digits, 3 seeds (about 10 minutes on 2 CPU cores)
    python bench/bench_fidelity.py --seeds 0 --budget 12

For each seed: first RE with ``--fidelity 1,3,9 --eta 3`` and ``--budget`` trainings (promotions
included); then single-fidelity RE at ``--epochs`` (default 9, the top rung) with as many
trainings as fit in the epochs the multi-fidelity run used. Both are seeded with
``examples/resnet_small.arch`` on the embedded digits task, so the comparison is at equal total
training epochs. Printed: the best validation accuracy of each (at its own training length),
the test accuracy after retraining the winner for 9 epochs, and the epochs spent.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from einc.runtime.search import SearchConfig, run_search

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1,2", help="search seeds, comma-separated")
    ap.add_argument("--budget", type=int, default=30, help="trainings of the multi-fidelity run")
    ap.add_argument("--fidelity", default="1,3,9")
    ap.add_argument("--eta", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    rungs = tuple(int(x) for x in args.fidelity.split(","))
    seed_arch = (ROOT / "examples" / "resnet_small.arch").read_text()
    common = dict(data="digits", strategy="re", seeds=(seed_arch,), seed_names=("resnet_small",), population=8,
                  tournament=3, batch_size=64, max_flops=30_000_000, workers=args.workers,
                  final_epochs=rungs[-1])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in (int(s) for s in args.seeds.split(",")):
            mf = run_search(SearchConfig(budget=args.budget, fidelity=rungs, eta=args.eta, seed=seed, **common),
                            Path(tmp) / f"mf{seed}")
            budget = max(1, mf["training_epochs"] // rungs[-1])
            sf = run_search(SearchConfig(budget=budget, epochs=rungs[-1], seed=seed, **common), Path(tmp) / f"sf{seed}")
            rows.append((seed, mf, sf))
            print(f"seed {seed}: multi-fidelity best val {100 * mf['best_val_acc']:.2f}% "
                  f"({mf['best_epochs']} epochs), test {100 * (mf['best_test_acc'] or 0):.2f}%, "
                  f"{mf['training_epochs']} epochs | single-fidelity best val {100 * sf['best_val_acc']:.2f}%, "
                  f"test {100 * (sf['best_test_acc'] or 0):.2f}%, {sf['training_epochs']} epochs", flush=True)
    print()
    print(f"{'':24}{'multi-fidelity':>16}{'single':>10}")
    for key, label in (("best_val_acc", "best validation (%)"), ("best_test_acc", "test after retrain (%)")):
        a = statistics.fmean(100 * (r[1][key] or 0) for r in rows)
        b = statistics.fmean(100 * (r[2][key] or 0) for r in rows)
        print(f"{label:24}{a:16.2f}{b:10.2f}")
    a = statistics.fmean(r[1]["training_epochs"] for r in rows)
    b = statistics.fmean(r[2]["training_epochs"] for r in rows)
    print(f"{'training epochs':24}{a:16.0f}{b:10.0f}")
    print(f"{'architectures tried':24}{statistics.fmean(r[1]['trained'] - r[1]['promotions'] for r in rows):16.1f}"
          f"{statistics.fmean(r[2]['trained'] for r in rows):10.1f}")


if __name__ == "__main__":
    main()
