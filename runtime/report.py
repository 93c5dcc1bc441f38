"""What a search leaves in its folder: plot, summary, best architecture and its PyTorch file.

Everything here is derived from the journal (and the saved configuration), so it can be
rebuilt at any time, also while a search is still running (``einc report OUT``). The search's
``Goal`` (runtime/goal.py: its task's metric, or a user objective's score) ranks evaluations and
names the figures: ``best_val_acc``/``best_test_acc`` for classification accuracy, as always,
``best_val_rel_l2``/``best_test_rel_l2`` for a Darcy-like dense task, ``best_score`` for an objective.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from .goal import ACCURACY, Goal
from .task import METRICS, Task


def _kind(r: dict) -> str:
    return r.get("kind", "eval")


def _scored(records: list[dict], goal: Goal = ACCURACY) -> list[tuple[dict, float]]:
    """(record, metric value) of each successful evaluation."""
    return [(r, a) for r in records if (a := goal.value(r)) is not None]


def pareto(records: list[dict], cost: str, goal: Goal = ACCURACY) -> list[dict]:
    """The successful evaluations no other beats on both the goal's metric and ``cost`` (lower).

    Repeats (``duplicate_of``) are left out: they are the same network as their original; with
    multi-fidelity, only each architecture's longest training counts. Each point is
    ``{"index", <the metric's key>: value, cost: value}``.
    """
    longest: dict[str, tuple[dict, float]] = {}
    for r, value in _scored(records, goal):
        if r.get(cost) is None or "duplicate_of" in r:
            continue
        if r["arch"] not in longest or r.get("rung", 0) > longest[r["arch"]][0].get("rung", 0):
            longest[r["arch"]] = (r, value)
    sign = -1.0 if goal.minimize else 1.0
    pts = sorted(((r, v, r[cost]) for r, v in longest.values()), key=lambda t: (t[2], -sign * t[1], t[0]["index"]))
    front, best = [], float("-inf")
    for r, v, c in pts:  # cheapest first: a point is on the front if it beats every cheaper one
        if sign * v > best:
            front.append({"index": r["index"], goal.metric: v, cost: c})
            best = sign * v
    return front


def _names(config) -> tuple[Goal, Task | None, str, str | None]:
    """The search's goal, its data's task (None for a user objective), and the journal keys of the
    validation and test values (``val_acc``, ``test_acc``; ``score``, None)."""
    goal = config.goal()
    task = config.data_task() if getattr(config, "objective", None) is None else None
    test = task.test_key if task is not None else None
    return goal, task, goal.metric, test


def summarize(config, grammar, shape, num_classes: int | None, records: list[dict[str, Any]]) -> dict[str, Any]:
    """The summary of a search from its journal records (proposals, evaluations, sessions, final).

    The value fields are named after the goal's keys: ``seed_val_acc``, ``best_val_acc``,
    ``best_test_acc`` and ``mean_val_acc`` for classification accuracy, ``best_val_rel_l2`` ... for
    relative l2; ``metric`` and ``metric_key`` say which, ``minimize`` its direction.
    """
    goal, task, key, test_key = _names(config)
    _acc = goal.value
    evals = sorted((r for r in records if _kind(r) == "eval"), key=lambda r: r["index"])
    final = next((r for r in records if _kind(r) == "final"), None)
    ok = [r for r in evals if _acc(r) is not None]
    best = goal.best(ok)
    trained = [r for r in evals if "duplicate_of" not in r]
    seeds = {}
    names = config.seed_names or [f"seed {i}" for i in range(len(config.seeds))]
    for name, text in zip(names, config.seeds, strict=True):
        canonical = grammar.parse(text, shape).text
        rec = next((r for r in evals if r["arch"] == canonical and "duplicate_of" not in r), None)
        seeds[name] = _acc(rec) if rec else None
    summary: dict[str, Any] = {
        "strategy": config.strategy, "data": config.data, "objective": config.objective, "grammar": config.grammar,
        "input_shape": list(shape),
        "classes": task.num_classes if task is not None else num_classes,
        "task": task.kind if task is not None else None,
        "metric": task.metric if task is not None else key,
        "metric_key": key, "minimize": goal.minimize,
        "output_shape": list(task.output_shape) if task is not None else None,
        "budget": config.budget,
        "evaluations": len(evals),
        "trained": len(trained),
        "reused_duplicates": len(evals) - len(trained),
        "retried_proposals": sum(r.get("retries", 0) for r in records if _kind(r) == "proposal"),
        "failed": sum(1 for r in trained if r.get("status") != "ok"),
        "failures": sorted({str(r.get("reason")).split(":")[0] for r in trained if r.get("status") != "ok"}),
        f"seed_{key}": seeds,
        f"best_{key}": _acc(best) if best else None,
        "best_index": best["index"] if best else None,
        "best_params": best.get("params") if best else None,  # backbone only: the head is not counted
        f"best_{test_key or 'test'}": (final or {}).get("metrics", {}).get(test_key) if test_key else None,
        f"mean_{key}": statistics.fmean(a for _, a in _scored(ok, goal)) if ok else None,
        "best_epochs": best.get("epochs", config.epochs) if best else None,
        "training_epochs": sum(r.get("epochs", config.epochs) for r in trained),
        "promotions": sum(1 for r in trained if r.get("origin") == "promotion"),
        "pareto": pareto(evals, "params", goal),
        "pareto_flops": pareto(evals, "flops", goal),
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


def write_outputs(out: Path, config, grammar, shape, num_classes: int | None, records: list[dict],
                  notes: tuple[str, ...] = ()) -> dict[str, Any]:
    """Write summary.json/.txt and plot.png, and best.arch/best.py when some evaluation succeeded."""
    summary = summarize(config, grammar, shape, num_classes, records)
    summary["notes"] = list(notes)
    files = ["journal.jsonl", "plot.png", "summary.json"]
    if summary["best_index"] is not None:
        best = next(r for r in records if _kind(r) == "eval" and r["index"] == summary["best_index"])
        (out / "best.arch").write_text(best["arch"] + "\n")
        _write_model(out / "best.py", config, grammar, best, shape, num_classes, summary)
        files[2:2] = ["best.arch", "best.py"]
        if _draw(out / "best.svg", grammar, best["arch"], shape):
            files.insert(4, "best.svg")
    summary["files"] = files + ["report.html"]  # the page (runtime/report_html.py) is written right after
    _plot(out / "plot.png", records, config.strategy, summary)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "summary.txt").write_text(format_summary(summary, out) + "\n")
    return summary


def _metric(s: dict[str, Any]) -> tuple[str, str, bool]:
    """(journal key, label, shown as a percentage) of a summary's metric; old summaries are accuracy."""
    key, name = s.get("metric_key", "val_acc"), s.get("metric", "accuracy")
    m = METRICS.get(name)
    return key, (m.label if m is not None else name), (m.percent if m is not None else False)


def _what(s: dict[str, Any]) -> str:
    """``19 classes``, ``dense, output 1x8x8``, ...: what the network outputs."""
    if s.get("task") in (None, "classification"):
        return f"{s['classes']} classes" if s.get("classes") is not None else "no head"
    return Task(s["task"], s["metric"], tuple(s["output_shape"])).describe()


def format_summary(s: dict[str, Any], out: Path | None = None) -> str:
    key, label, percent = _metric(s)
    test_key = "test_" + key.removeprefix("val_") if key.startswith("val_") else "test"

    def share(x: float | None) -> str:
        return "n/a" if x is None else f"{100 * x:.2f}%"

    def pct(x: float | None) -> str:  # a value of the metric
        return f"{x:.4g}" if x is not None and not percent else share(x)

    scored = f"with objective {s.get('objective')}" if s.get("objective") and not s["data"] else f"on {s['data']}"
    lines = [f"{s['strategy']} {scored} (input {'x'.join(map(str, s['input_shape']))}, {_what(s)}): "
             f"{s['trained']} trained ({s['failed']} failed), {s['reused_duplicates']} repeats reused, "
             f"{s['retried_proposals']} repeated proposals redrawn"]
    for name, acc in s[f"seed_{key}"].items():
        lines.append(f"  seed {name}: validation {label} {pct(acc)}")
    if s["strategy"] == "sample":
        lines.append(f"  mean validation {label} of the samples: {pct(s[f'mean_{key}'])}")
    if s["best_index"] is None:
        lines.append(f"  no evaluation succeeded; reasons: {', '.join(s['failures']) or 'none recorded'} "
                     "(see the journal's reason fields)")
    else:
        lines.append(f"  best found (evaluation {s['best_index']}, {s['best_params'] or 0:,} backbone params, "
                     f"{s['best_epochs']} epochs): validation {label} {pct(s[f'best_{key}'])}, "
                     f"test after retraining {pct(s.get(f'best_{test_key}'))}")
        if s["promotions"]:
            lines.append(f"  multi-fidelity: {s['promotions']} promotions, "
                         f"{s['training_epochs']} training epochs in all")
        front = ", ".join(str(p["index"]) for p in s["pareto"][:8]) + (", ..." if len(s["pareto"]) > 8 else "")
        lines.append(f"  Pareto front ({label} vs params): {len(s['pareto'])} evaluations ({front})")
    if s.get("evaluations_per_minute") is not None:
        lines.append(f"  this session: {s['evaluations_per_minute']} evaluations/minute, workers busy "
                     f"{share(s['busy'])}, {share(s['share_outside_training'])} of worker time outside training")
    lines += [f"  note: {n}" for n in s.get("notes", [])]
    if out is not None:
        lines.append(f"  files: {out}/" + ", ".join(s.get("files", ["journal.jsonl"])))
    return "\n".join(lines)


def _write_model(path: Path, config, grammar, best: dict, shape, num_classes: int | None,
                 summary: dict[str, Any]) -> None:
    """The winner as a standalone PyTorch file, with its task's head (the classifier for classification)."""
    import einc
    from einc.emit import emit

    key, label, _ = _metric(summary)
    out = tuple(summary["output_shape"]) if summary.get("output_shape") else None
    model = einc.build(grammar.parse(best["arch"], shape), input_shape=shape,
                       **({"output_shape": out} if out is not None else {"num_classes": num_classes}))
    value = best.get("metrics", {}).get(key)
    what = f"classes: {num_classes}" if summary.get("task") in (None, "classification") else _what(summary)
    head = "the classification head" if summary.get("task") in (None, "classification") else "the head"
    path.write_text(emit(model, "Net", [
        f"grammar: {config.grammar} (hash {grammar.hash}), {what}",
        f"found by einc search ({config.strategy}) as evaluation {best['index']}: validation {label} "
        f"{value:.4f}; {best.get('params') or 0:,} parameters without {head}"]))


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


def _plot(path: Path, records: list[dict], strategy: str, summary: dict[str, Any] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = summary or {}
    key, label, percent = _metric(s)
    goal = Goal(key, bool(s.get("minimize", False)))
    scale = 100.0 if percent else 1.0
    unit = f"validation {label}" + (" (%)" if percent else "")
    evals = sorted((r for r in records if _kind(r) == "eval"), key=lambda r: r["index"])
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4), dpi=110, gridspec_kw={"width_ratios": [3, 2]})
    scored = _scored(evals, goal)
    ax.scatter([r["index"] for r, _ in scored], [scale * a for _, a in scored], s=12, alpha=0.6, label="evaluation")
    best: float | None = None
    curve: list[float | None] = []
    for r in evals:
        a = goal.value(r)
        if a is not None and (best is None or goal.better(scale * a, best)):
            best = scale * a
        curve.append(best)
    ax.step([r["index"] for r in evals], curve, where="post", color="C3", label="best so far")
    fails = [r["index"] for r in evals if goal.value(r) is None]
    if fails:
        floor = 0.0 if percent or not scored else min(scale * a for _, a in scored)
        ax.scatter(fails, [floor] * len(fails), marker="x", color="grey", s=14, label="failed")
    where = "best" if goal.minimize else "lower right"  # a minimised metric's worst points are high
    ax.set_xlabel("evaluation")
    ax.set_ylabel(unit)
    ax.set_title(f"einc search ({strategy})")
    ax.legend(loc=where, fontsize=8)

    pts = [(r["params"], scale * a) for r, a in scored if r.get("params") and "duplicate_of" not in r]
    if pts:
        ax2.scatter(*zip(*pts, strict=False), s=12, alpha=0.5, label="evaluation")
        front = [(p["params"], scale * p[key]) for p in pareto(evals, "params", goal)]
        ax2.step(*zip(*front, strict=False), where="post", color="C3", marker="o", ms=4, label="Pareto front")
        ax2.set_xscale("log")
        ax2.legend(loc=where, fontsize=8)
    ax2.set_xlabel("parameters (backbone)")
    ax2.set_ylabel(unit)
    ax2.set_title(f"{label} against size")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
