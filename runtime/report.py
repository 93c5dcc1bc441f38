"""What a finished search leaves in its folder: plot, best architecture, its PyTorch file, summary.

Everything here is derived from the journal, so it can be rebuilt at any time.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any


def _acc(r: dict) -> float | None:
    return r.get("metrics", {}).get("val_acc") if r.get("status") == "ok" else None


def write_outputs(out: Path, config, grammar, shape, num_classes: int, records: list[dict], final: dict | None,
                  wall: float, train_seconds: float, fresh: int) -> dict[str, Any]:
    ok = [r for r in records if _acc(r) is not None]
    best = max(ok, key=lambda r: (_acc(r), -r["index"])) if ok else None
    seeds = {}
    for name, text in zip(config.seed_names or [f"seed {i}" for i in range(len(config.seeds))], config.seeds):
        canonical = grammar.parse(text, shape).text
        rec = next((r for r in records if r["arch"] == canonical and "duplicate_of" not in r), None)
        seeds[name] = _acc(rec) if rec else None
    summary: dict[str, Any] = {
        "strategy": config.strategy, "data": config.data, "input_shape": list(shape), "classes": num_classes,
        "evaluations": len(records),
        "trained": sum(1 for r in records if "duplicate_of" not in r),
        "reused_duplicates": sum(1 for r in records if "duplicate_of" in r),
        "failed": sum(1 for r in records if r.get("status") != "ok"),
        "failures": sorted({str(r.get("reason")).split(":")[0] for r in records if r.get("status") != "ok"}),
        "seed_val_acc": seeds,
        "best_val_acc": _acc(best) if best else None,
        "best_index": best["index"] if best else None,
        "best_params": best.get("params") if best else None,
        "best_test_acc": (final or {}).get("metrics", {}).get("test_acc"),
        "mean_val_acc": statistics.fmean(_acc(r) for r in ok) if ok else None,
        "wall_seconds": round(wall, 1),
        # this process's own work: a resumed search reuses what its journal already held
        "evaluations_per_minute": round(60 * fresh / wall, 2) if wall > 0 and fresh else None,
        # everything but the training loops: sampling, mutation, building, worker start-up, journaling
        "share_outside_training": round(max(0.0, 1 - train_seconds / wall), 4) if wall > 0 and train_seconds else None,
    }
    if best:
        (out / "best.arch").write_text(best["arch"] + "\n")
        _write_model(out / "best.py", grammar, best["arch"], shape, num_classes)
    _plot(out / "plot.png", records, config.strategy)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "summary.txt").write_text(format_summary(summary, out) + "\n")
    return summary


def format_summary(s: dict[str, Any], out: Path | None = None) -> str:
    pct = lambda x: "n/a" if x is None else f"{100 * x:.2f}%"  # noqa: E731
    lines = [f"{s['strategy']} on {s['data']} (input {'x'.join(map(str, s['input_shape']))}, {s['classes']} classes): "
             f"{s['evaluations']} evaluations, {s['trained']} trained, {s['reused_duplicates']} duplicates reused, "
             f"{s['failed']} failed"]
    for name, acc in s["seed_val_acc"].items():
        lines.append(f"  seed {name}: validation accuracy {pct(acc)}")
    if s["strategy"] == "sample":
        lines.append(f"  mean validation accuracy of the samples: {pct(s['mean_val_acc'])}")
    lines.append(f"  best found (evaluation {s['best_index']}, {s['best_params'] or 0:,} params): "
                 f"validation {pct(s['best_val_acc'])}, test after retraining {pct(s['best_test_acc'])}")
    lines.append(f"  {s['evaluations_per_minute']} evaluations/minute; "
                 f"{pct(s['share_outside_training'])} of the time outside training")
    if out is not None:
        lines.append(f"  files: {out}/journal.jsonl, plot.png, best.arch, best.py, summary.json")
    return "\n".join(lines)


def _write_model(path: Path, grammar, text: str, shape, num_classes: int) -> None:
    import einc
    from einc.emit import emit

    model = einc.build(grammar.parse(text, shape), input_shape=shape, num_classes=num_classes)
    path.write_text(emit(model, "Net", [f"architecture: {text}",
                                        f"input: {tuple(shape)}, classes: {num_classes}"]))


def _plot(path: Path, records: list[dict], strategy: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [r["index"] for r in records if _acc(r) is not None]
    ys = [100 * _acc(r) for r in records if _acc(r) is not None]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.scatter(xs, ys, s=12, alpha=0.6, label="evaluation")
    best, curve = float("-inf"), []
    for r in sorted(records, key=lambda r: r["index"]):
        a = _acc(r)
        best = max(best, 100 * a) if a is not None else best
        curve.append(best if best > float("-inf") else None)
    ax.step([r["index"] for r in sorted(records, key=lambda r: r["index"])], curve, where="post", color="C3",
            label="best so far")
    fails = [r["index"] for r in records if _acc(r) is None]
    if fails:
        ax.scatter(fails, [0] * len(fails), marker="x", color="grey", s=14, label="failed")
    ax.set_xlabel("evaluation")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(f"einc search ({strategy})")
    ax.legend(loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
