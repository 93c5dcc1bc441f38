"""bench/bench_strategies.py: its arithmetic, and the --quick smoke run end to end."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import bench_strategies as bench  # noqa: E402  (found on the path set above)


def test_best_so_far_counts_trainings_not_repeats_and_holds_past_the_last():
    def ev(index, acc, **extra):
        return {"kind": "eval", "index": index, "status": "ok" if acc is not None else "failed",
                "metrics": {} if acc is None else {"val_acc": acc}, **extra}

    records = [ev(1, 0.5), ev(0, 0.2), {"kind": "proposal", "index": 2}, ev(2, 0.5, duplicate_of=1), ev(3, None),
               ev(4, 0.7)]
    assert bench.best_so_far(records, 6) == [0.2, 0.5, 0.5, 0.7, 0.7, 0.7]
    assert bench.reach([0.2, 0.5, 0.7], 0.5) == 2 and bench.reach([0.2], 0.5) is None
    assert bench.median_reach([2, None, None], 3) == ">3" and bench.median_reach([2, 4, None], 9) == "4"
    mean, half = bench.mean_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.303 * 1.0 / 3 ** 0.5)


@pytest.mark.slow
def test_quick_run_prints_every_strategy_and_draws_the_plot(tmp_path, capsys):
    plot, out = tmp_path / "s.png", tmp_path / "s.json"
    assert bench.main(["--quick", "--plot", str(plot), "--json", str(out), "--out", str(tmp_path / "runs")]) == 0
    text = capsys.readouterr().out
    for name in ("RS", "RE", "RE+prefilter", "RE+warmup", "BO", "BO+warmup"):
        assert f"\n{name} " in text
    assert "trainings to reach RE's final median best" in text and "build/train" in text
    assert plot.stat().st_size > 0
    figures = json.loads(out.read_text())
    assert all(len(c) == 1 and len(c[0]) == 12 for c in figures["curves"].values())
    assert all(c == sorted(c) for cs in figures["curves"].values() for c in cs)  # best so far never drops
