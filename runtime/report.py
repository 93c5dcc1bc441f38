"""What a search leaves in its folder: plot, summary, best architecture and its PyTorch file.

Everything here is derived from the journal (and the saved configuration), so it can be
rebuilt at any time, also while a search is still running (``einc report OUT``).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from .schedule import best as best_of
from .schedule import fitness as _acc


def _kind(r: dict) -> str:
    return r.get("kind", "eval")


def _scored(records: list[dict]) -> list[tuple[dict, float]]:
    """(record, validation accuracy) of each successful evaluation."""
    return [(r, a) for r in records if (a := _acc(r)) is not None]


def pareto(records: list[dict], cost: str) -> list[dict]:
    """The successful evaluations no other beats on both accuracy (higher) and ``cost`` (lower).

    Repeats (``duplicate_of``) are left out: they are the same network as their original; with
    multi-fidelity, only each architecture's longest training counts.
    """
    longest: dict[str, tuple[dict, float]] = {}
    for r, acc in _scored(records):
        if r.get(cost) is None or "duplicate_of" in r:
            continue
        if r["arch"] not in longest or r.get("rung", 0) > longest[r["arch"]][0].get("rung", 0):
            longest[r["arch"]] = (r, acc)
    pts = sorted(((r, acc, r[cost]) for r, acc in longest.values()), key=lambda t: (t[2], -t[1], t[0]["index"]))
    front, best = [], float("-inf")
    for r, acc, c in pts:  # cheapest first: a point is on the front if it beats every cheaper one
        if acc > best:
            front.append({"index": r["index"], "val_acc": acc, cost: c})
            best = acc
    return front


def summarize(config, grammar, shape, num_classes: int, records: list[dict[str, Any]]) -> dict[str, Any]:
    """The summary of a search from its journal records (proposals, evaluations, sessions, final)."""
    evals = sorted((r for r in records if _kind(r) == "eval"), key=lambda r: r["index"])
    final = next((r for r in records if _kind(r) == "final"), None)
    ok = [r for r in evals if _acc(r) is not None]
    best = best_of(ok)
    trained = [r for r in evals if "duplicate_of" not in r]
    seeds = {}
    names = config.seed_names or [f"seed {i}" for i in range(len(config.seeds))]
    for name, text in zip(names, config.seeds, strict=True):
        canonical = grammar.parse(text, shape).text
        rec = next((r for r in evals if r["arch"] == canonical and "duplicate_of" not in r), None)
        seeds[name] = _acc(rec) if rec else None
    summary: dict[str, Any] = {
        "strategy": config.strategy, "data": config.data, "grammar": config.grammar, "input_shape": list(shape),
        "classes": num_classes,
        "budget": config.budget,
        "evaluations": len(evals),
        "trained": len(trained),
        "reused_duplicates": len(evals) - len(trained),
        "retried_proposals": sum(r.get("retries", 0) for r in records if _kind(r) == "proposal"),
        "failed": sum(1 for r in trained if r.get("status") != "ok"),
        "failures": sorted({str(r.get("reason")).split(":")[0] for r in trained if r.get("status") != "ok"}),
        "seed_val_acc": seeds,
        "best_val_acc": _acc(best) if best else None,
        "best_index": best["index"] if best else None,
        "best_params": best.get("params") if best else None,  # backbone only: the head is not counted
        "best_test_acc": (final or {}).get("metrics", {}).get("test_acc"),
        "mean_val_acc": statistics.fmean(a for _, a in _scored(ok)) if ok else None,
        "best_epochs": best.get("epochs", config.epochs) if best else None,
        "training_epochs": sum(r.get("epochs", config.epochs) for r in trained),
        "promotions": sum(1 for r in trained if r.get("origin") == "promotion"),
        "pareto": pareto(evals, "params"),
        "pareto_flops": pareto(evals, "flops"),
    }
    summary.update(_throughput(records, config.workers))
    return summary


def _began(r: dict) -> float:
    """When a worker began the job: its finish less the job's own build and training time (the
    dispatch time ``started`` also counts a worker still importing torch)."""
    inside = sum(r.get("timing", {}).get(k, 0.0) for k in ("build", "train"))
    return r["finished"] - inside if inside else r["started"]


def _throughput(records: list[dict], workers: int) -> dict[str, Any]:
    """Figures of the latest session (a resumed search reuses what its journal held before)."""
    sessions = [r for r in records if _kind(r) == "session"]
    since = sessions[-1]["started"] if sessions else 0.0
    mine = [r for r in records if _kind(r) == "eval" and "duplicate_of" not in r and r.get("started", 0) >= since]
    if not mine:
        return {"wall_seconds": None, "evaluations_per_minute": None, "busy": None, "share_outside_training": None}
    workers = sessions[-1].get("workers", workers) if sessions else workers
    start = since or min(r["started"] for r in mine)
    end = max(r["finished"] for r in mine)
    first, wall = min(r["started"] for r in mine), end - start
    phase = end - first  # from the first evaluation's start to the last one's end
    evaluating = sum(r.get("seconds", 0.0) for r in mine)
    training = sum(r.get("timing", {}).get("train", 0.0) for r in mine)
    return {
        "wall_seconds": round(wall, 1),
        "evaluations_per_minute": round(60 * len(mine) / wall, 2) if wall > 0 else None,
        # from the search's grammar and data ready to a worker starting the first candidate's build
        "first_evaluation_after": round(min(_began(r) for r in mine) - sessions[-1].get("ready", since), 2)
        if sessions else None,
        # sum of evaluation times over (workers x the evaluation phase): 1.0 means no worker ever waited
        "busy": round(min(1.0, evaluating / (workers * phase)), 4) if phase > 0 else None,
        # worker time not spent in training loops: building, worker start-up, waiting for proposals
        "share_outside_training": round(max(0.0, 1 - training / (workers * phase)), 4) if phase > 0 else None,
    }


def write_outputs(out: Path, config, grammar, shape, num_classes: int, records: list[dict],
                  notes: tuple[str, ...] = ()) -> dict[str, Any]:
    """Write summary.json/.txt and plot.png, and best.arch/best.py when some evaluation succeeded."""
    summary = summarize(config, grammar, shape, num_classes, records)
    summary["notes"] = list(notes)
    files = ["journal.jsonl", "plot.png", "summary.json"]
    if summary["best_index"] is not None:
        best = next(r for r in records if _kind(r) == "eval" and r["index"] == summary["best_index"])
        (out / "best.arch").write_text(best["arch"] + "\n")
        _write_model(out / "best.py", config, grammar, best, shape, num_classes)
        files[2:2] = ["best.arch", "best.py"]
        if _draw(out / "best.svg", grammar, best["arch"], shape):
            files.insert(4, "best.svg")
    summary["files"] = files
    _plot(out / "plot.png", records, config.strategy)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "summary.txt").write_text(format_summary(summary, out) + "\n")
    return summary


def format_summary(s: dict[str, Any], out: Path | None = None) -> str:
    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{100 * x:.2f}%"

    lines = [f"{s['strategy']} on {s['data']} (input {'x'.join(map(str, s['input_shape']))}, {s['classes']} classes): "
             f"{s['trained']} trained ({s['failed']} failed), {s['reused_duplicates']} repeats reused, "
             f"{s['retried_proposals']} repeated proposals redrawn"]
    for name, acc in s["seed_val_acc"].items():
        lines.append(f"  seed {name}: validation accuracy {pct(acc)}")
    if s["strategy"] == "sample":
        lines.append(f"  mean validation accuracy of the samples: {pct(s['mean_val_acc'])}")
    if s["best_index"] is None:
        lines.append(f"  no evaluation succeeded; reasons: {', '.join(s['failures']) or 'none recorded'} "
                     "(see the journal's reason fields)")
    else:
        lines.append(f"  best found (evaluation {s['best_index']}, {s['best_params'] or 0:,} backbone params, "
                     f"{s['best_epochs']} epochs): validation {pct(s['best_val_acc'])}, "
                     f"test after retraining {pct(s['best_test_acc'])}")
        if s["promotions"]:
            lines.append(f"  multi-fidelity: {s['promotions']} promotions, "
                         f"{s['training_epochs']} training epochs in all")
        front = ", ".join(str(p["index"]) for p in s["pareto"][:8]) + (", ..." if len(s["pareto"]) > 8 else "")
        lines.append(f"  Pareto front (accuracy vs params): {len(s['pareto'])} evaluations ({front})")
    if s.get("evaluations_per_minute") is not None:
        lines.append(f"  this session: {s['evaluations_per_minute']} evaluations/minute, workers busy "
                     f"{pct(s['busy'])}, {pct(s['share_outside_training'])} of worker time outside training")
    lines += [f"  note: {n}" for n in s.get("notes", [])]
    if out is not None:
        lines.append(f"  files: {out}/" + ", ".join(s.get("files", ["journal.jsonl"])))
    return "\n".join(lines)


def _write_model(path: Path, config, grammar, best: dict, shape, num_classes: int) -> None:
    import einc
    from einc.emit import emit

    model = einc.build(grammar.parse(best["arch"], shape), input_shape=shape, num_classes=num_classes)
    path.write_text(emit(model, "Net", [
        f"grammar: {config.grammar} (hash {grammar.hash}), classes: {num_classes}",
        f"found by einc search ({config.strategy}) as evaluation {best['index']}: validation accuracy "
        f"{_acc(best):.4f}; {best.get('params') or 0:,} parameters without the classification head"]))


def _draw(path: Path, grammar, text: str, shape) -> bool:
    """The winner drawn (einc draw); a network too large to draw whole is drawn 4 levels deep."""
    from einc.draw import draw
    from einc.errors import EinError

    arch = grammar.parse(text, shape)
    for depth in (None, 4):
        try:
            draw(arch, shape, path, depth=depth, title="best found")
            return True
        except EinError:
            continue
    return False


def _plot(path: Path, records: list[dict], strategy: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    evals = sorted((r for r in records if _kind(r) == "eval"), key=lambda r: r["index"])
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4), dpi=110, gridspec_kw={"width_ratios": [3, 2]})
    scored = _scored(evals)
    ax.scatter([r["index"] for r, _ in scored], [100 * a for _, a in scored], s=12, alpha=0.6, label="evaluation")
    best, curve = float("-inf"), []
    for r in evals:
        a = _acc(r)
        best = max(best, 100 * a) if a is not None else best
        curve.append(best if best > float("-inf") else None)
    ax.step([r["index"] for r in evals], curve, where="post", color="C3", label="best so far")
    fails = [r["index"] for r in evals if _acc(r) is None]
    if fails:
        ax.scatter(fails, [0] * len(fails), marker="x", color="grey", s=14, label="failed")
    ax.set_xlabel("evaluation")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(f"einc search ({strategy})")
    ax.legend(loc="lower right", fontsize=8)

    pts = [(r["params"], 100 * a) for r, a in scored if r.get("params") and "duplicate_of" not in r]
    if pts:
        ax2.scatter(*zip(*pts, strict=False), s=12, alpha=0.5, label="evaluation")
        front = [(p["params"], 100 * p["val_acc"]) for p in pareto(evals, "params")]
        ax2.step(*zip(*front, strict=False), where="post", color="C3", marker="o", ms=4, label="Pareto front")
        ax2.set_xscale("log")
        ax2.legend(loc="lower right", fontsize=8)
    ax2.set_xlabel("parameters (backbone)")
    ax2.set_ylabel("validation accuracy (%)")
    ax2.set_title("accuracy against size")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
