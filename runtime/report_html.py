"""``OUT/report.html``: a search on one self-contained page, rewritten while it runs.

The page is one file, the data, script (report_html.js) and styles (report_html.css) inlined: it
opens from ``file://``, after ``scp``, or as a CI artefact, with no server and no network. It is
derived from the journal alone (``trials.folder_records``), so ``einc report OUT`` rebuilds it at
any time, and the search rewrites it (``LivePage``) after evaluations: atomically (a reader never
sees half a file), at most once per second and never more than ``SHARE`` of the search's time
(a rewrite reads the journal and may draw a new best). While a search holds its folder's lock the
page reloads itself every ``RELOAD`` seconds (or as seldom as it is rewritten, for a large search),
keeping its scroll, sort and selection.

What it holds: progress against the budget, best-so-far against trainings and wall time, the
Pareto fronts (``report.pareto``), the best architecture drawn (``einc draw``), in bracket
notation and laid out (``einc fmt``), every evaluation as ``trials.rows``, the rungs of
multi-fidelity, and how often each grammar alternative is used by the ``TOP`` best
architectures against the whole run (what ``einc fit --top TOP`` would learn from).

Size: an architecture's text is most of an evaluation's bytes, and a search's architectures are
near copies of each other, so their texts travel deflated (zlib, base64) in blocks of ``BLOCK``,
and the browser inflates them (``DecompressionStream``); full blocks are compressed once.
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
import threading
import time
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .goal import Goal
from .report import _throughput, pareto
from .task import METRICS
from .trials import folder_records, rows, with_pending

FILE = "report.html"
RELOAD = 10  # seconds between reloads of an open page while its search runs
TOP = 10  # the best architectures the alternatives' shares are counted in (einc fit's default --top)
SAMPLE = 500  # at most this many of the run's architectures are counted for its shares (evenly spaced)
BLOCK = 500  # architectures per compressed block
SHARE = 0.05  # the most of a search's time LivePage may spend rewriting the page
SETTLE = 0.25  # seconds a rewrite waits after an evaluation, for the proposals that follow it
ASSETS = Path(__file__).parent


@dataclass
class Cache:
    """What one rewrite leaves to the next: each architecture's alternative uses, the best's
    drawing and the compressed blocks of architectures that are full."""

    uses: dict[str, dict[tuple[Any, int], int] | None] = field(default_factory=dict)
    drawing: tuple[str, str] = ("", "")
    drew: float = 0.0  # seconds the last build spent drawing a new best (matplotlib's import, the first time)
    blocks: dict[tuple[str, ...], str] = field(default_factory=dict)


def metric_name(goal: Goal) -> tuple[str, bool]:
    """(label, shown as a percentage) of a goal's metric: ``("accuracy", True)`` for ``val_acc``."""
    m = next((m for m in METRICS.values() if goal.metric == f"val_{m.key}"), None)
    return (m.label, m.percent) if m is not None else (goal.metric, False)


def build(records: list[dict[str, Any]], config: Any, goal: Goal, grammar: Any = None,
          shape: tuple[int, ...] | None = None, *, live: bool = False, cache: Cache | None = None,
          title: str = "einc search", now: float | None = None, reload: float = RELOAD) -> str:
    """The page's HTML for a search's journal ``records`` (any kinds; pending results included).

    ``config`` is the search's ``SearchConfig``; ``grammar`` and ``shape`` (its input) draw the best
    architecture and count alternatives (without them the page leaves both out). ``live``: the
    search is running, so the page reloads itself."""
    cache = cache if cache is not None else Cache()
    table = rows(records, goal, config.epochs)
    label, percent = metric_name(goal)
    evals = [r for r in records if r.get("kind", "eval") == "eval"]
    evals.sort(key=lambda r: r["index"])
    sessions = [r for r in records if r.get("kind") == "session"]
    t0 = sessions[0]["started"] if sessions else min((r.get("started", 0.0) for r in evals), default=0.0)
    archs: dict[str, int] = {}
    for r in evals:
        archs.setdefault(r["arch"], len(archs))
    best = goal.best(evals)
    data = {
        "meta": {
            "title": title, "strategy": config.strategy, "data": config.data, "grammar": config.grammar,
            "objective": config.objective, "metric": goal.metric, "label": label, "percent": percent,
            "minimize": goal.minimize, "budget": config.budget if config.budget < 1_000_000_000 else None,
            "workers": sessions[-1].get("workers", config.workers) if sessions else config.workers,
            "fidelity": list(config.fidelity), "eta": config.eta, "live": live, "reload": round(reload),
            "generated": round(time.time() if now is None else now, 3), "t0": t0,
            "finished": any(r.get("kind") == "final" for r in records),
            "input": list(shape) if shape else None,
        },
        "progress": _progress(records, evals, live),
        "ev": _columns(table, goal, archs, t0),
        "pareto": {cost: [p["index"] for p in pareto(evals, cost, goal)] for cost in ("params", "flops")},
        "best": _best(best, goal, grammar, shape, cache) if best else None,
        "rungs": _rungs(evals, goal, config.fidelity) if config.fidelity else [],
        "alternatives": _alternatives(evals, goal, grammar, shape, cache) if grammar is not None else None,
        "archs": {"block": BLOCK, "z": _blocks(list(archs), cache)},
    }
    return _page(data, title)


def write(path: str | Path, text: str) -> None:
    """Replace ``path`` by ``text`` atomically: a page open in a browser reloads a whole file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def running(out: str | Path) -> bool:
    """Whether a search holds ``out/.lock`` now (runtime/search.py), read from /proc/locks so that
    asking never takes the lock (a search starting at that moment would be refused)."""
    try:
        st = (Path(out) / ".lock").stat()
        locks = Path("/proc/locks").read_text()
    except OSError:
        return False
    me = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino} "
    return any(" FLOCK " in line and me in line for line in locks.splitlines())


def rebuild(out: str | Path, config: Any, grammar: Any, shape: tuple[int, ...] | None) -> Path:
    """Write ``out/report.html`` from the folder's journal (``einc report``, by way of
    ``search.report_folder``, which has read the search's config and grammar)."""
    out = Path(out)
    cache = Cache()
    reuse_drawing(out, cache)
    write(out / FILE, build(folder_records(out), config, config.goal(), grammar, shape, live=running(out),
                            cache=cache, title=f"einc search {out.resolve().name}"))
    return out / FILE


def reuse_drawing(out: Path, cache: Cache) -> None:
    """Take the drawing ``report.write_outputs`` has just made (best.svg of best.arch) instead of
    drawing the best again (a second or more)."""
    try:
        arch, svg = out / "best.arch", out / "best.svg"
        if svg.stat().st_mtime >= arch.stat().st_mtime:  # not a drawing left from an earlier best
            text = svg.read_text(encoding="utf-8")
            cache.drawing = (arch.read_text(encoding="utf-8").strip(), text[text.index("<svg"):])
    except (OSError, ValueError):
        pass


class LivePage:
    """The search's page while it runs: ``update()`` after an evaluation, ``finish()`` at the end.

    A rewrite happens in a background thread, at most once per ``max(1 s, cost / SHARE)`` (the
    cost without drawing a new best, which is rare and, the first time, imports matplotlib) and
    ``SETTLE`` after the evaluation that asked for it: a burst of evaluations is one rewrite, and
    the last state of a burst is written when the interval has passed, not at the next evaluation
    (which may be an hour away). A failing
    rewrite warns and stops rewriting; the search goes on. The thread is a daemon, and a stopped
    search waits for it at most ``close``'s timeout."""

    def __init__(self, out: Path, config: Any, goal: Goal, grammar: Any, shape: tuple[int, ...] | None):
        self.out, self.config, self.goal, self.grammar, self.shape = Path(out), config, goal, grammar, shape
        self.cache = Cache()
        self.title = f"einc search {self.out.resolve().name}"
        self._wake = threading.Condition()
        self._dirty = self._closed = False
        self._next = time.monotonic() + 1.0
        self._every = 1.0  # seconds between rewrites: max(1 s, the last one's cost / SHARE)
        self._thread: threading.Thread | None = None

    def update(self) -> None:
        with self._wake:
            if self._closed:
                return
            if not self._dirty:  # what follows an evaluation (the next proposals) lands within SETTLE
                self._next = max(self._next, time.monotonic() + SETTLE)
                self._dirty = True
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="einc-report-page", daemon=True)
                self._thread.start()
            self._wake.notify()

    def finish(self) -> None:
        """The final page (no reload), written in the caller's thread once a rewrite in flight is done."""
        self.close(timeout=None)
        reuse_drawing(self.out, self.cache)
        try:
            self._write(live=False)
        except Exception as e:  # the page is a view: never the search's failure
            _warn(self.out, e)

    def close(self, timeout: float | None = 2.0) -> None:
        """Stop rewriting (a stopped search): let a rewrite in flight end, within ``timeout``, so the
        interpreter never exits under a thread that is inside torch or matplotlib (C++ aborts then)."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._closed and (not self._dirty or time.monotonic() < self._next):
                    self._wake.wait(None if not self._dirty else max(0.0, self._next - time.monotonic()))
                if self._closed:
                    return
                self._dirty = False
            t, self.cache.drew = time.monotonic(), 0.0
            try:
                self._write(live=True)
            except Exception as e:
                _warn(self.out, e)
                with self._wake:
                    self._closed = True
                return
            self._every = max(1.0, (time.monotonic() - t - self.cache.drew) / SHARE)  # a new best's drawing is rare
            self._next = time.monotonic() + self._every

    def _write(self, live: bool) -> None:
        text = build(_snapshot(self.out), self.config, self.goal, self.grammar, self.shape, live=live,
                     cache=self.cache, title=self.title, reload=max(RELOAD, self._every) if live else RELOAD)
        with self._wake:
            if live and self._closed:
                return  # finish() has written, or will write, the final page
            write(self.out / FILE, text)


def _snapshot(out: Path) -> list[dict[str, Any]]:
    """The journal and its pending results as the search itself has written them: whole lines only
    (it may be appending one right now), unchecked (``Journal.append`` checked every record)."""
    parts = []
    for name in ("journal.jsonl", "journal.jsonl.pending"):
        try:
            data = (out / name).read_bytes()
        except FileNotFoundError:
            data = b""
        parts.append([json.loads(line) for line in data[:data.rfind(b"\n") + 1].splitlines() if line.strip()])
    return with_pending(*parts)


def _warn(out: Path, e: Exception) -> None:
    warnings.warn(f"{out / FILE}: warning: not rewritten ({type(e).__name__}: {e})", RuntimeWarning, stacklevel=2)


# ---------------------------------------------------------------------- the data


def _progress(records: list[dict], evals: list[dict], live: bool) -> dict[str, Any]:
    trained = [r for r in evals if "duplicate_of" not in r]
    done = {r["index"] for r in evals}
    proposed = [r for r in records if r.get("kind") == "proposal" and "duplicate_of" not in r]
    workers = next((r.get("workers", 1) for r in reversed(records) if r.get("kind") == "session"), 1)
    return {"trained": len(trained), "failed": sum(r.get("status") != "ok" for r in trained),
            "repeats": len(evals) - len(trained), "evaluations": len(evals),
            "in_flight": sum(r["index"] not in done for r in proposed) if live else 0,
            **_throughput(records, workers)}


def _columns(table: list[dict[str, Any]], goal: Goal, archs: dict[str, int], t0: float) -> dict[str, list]:
    """The rows as columns (short keys; origins and reasons as indices into lists of the distinct ones)."""
    origins: dict[str, int] = {}
    reasons: dict[str, int] = {}

    def code(d: dict[str, int], v: Any) -> int:
        return -1 if v is None else d.setdefault(str(v), len(d))

    cols: dict[str, list] = {
        "i": [r["index"] for r in table],
        "a": [archs[r["arch"]] for r in table],
        "o": [code(origins, r["origin"]) for r in table],
        "p": [r["parent"] for r in table],
        "d": [r["duplicate_of"] for r in table],
        "ok": [int(r["status"] == "ok") for r in table],
        "r": [code(reasons, r["reason"]) for r in table],
        "v": [r[goal.metric] for r in table],
        "pa": [r["params"] for r in table],
        "fl": [r["flops"] for r in table],
        "s": [r["seconds"] for r in table],
        "f": [None if r["finished"] is None else round(r["finished"] - t0, 2) for r in table],
        "ru": [r["rung"] for r in table],
        "ep": [r["epochs"] for r in table],
    }
    cols["origins"], cols["reasons"] = list(origins), list(reasons)
    return cols


def _best(r: dict[str, Any], goal: Goal, grammar: Any, shape: tuple[int, ...] | None, cache: Cache) -> dict:
    from einc.fmt import layout
    from einc.notation import parse_syntax

    out = {"index": r["index"], "value": goal.value(r), "params": r.get("params"), "flops": r.get("flops"),
           "epochs": r.get("epochs"), "text": r["arch"], "formatted": layout(parse_syntax(r["arch"])), "svg": ""}
    if grammar is not None and shape is not None:
        if cache.drawing[0] != r["arch"]:
            t = time.monotonic()
            cache.drawing = (r["arch"], _drawing(grammar, r["arch"], shape))
            cache.drew = time.monotonic() - t
        out["svg"] = cache.drawing[1]
    return out


def _drawing(grammar: Any, text: str, shape: tuple[int, ...]) -> str:
    """``einc draw``'s SVG of ``text`` as an inline element (4 levels deep if too large to draw whole)."""
    from .report import _draw

    with tempfile.TemporaryDirectory(prefix="einc-page-") as tmp:
        path = Path(tmp) / "best.svg"
        if not _draw(path, grammar, text, shape):
            return ""
        svg = path.read_text(encoding="utf-8")
    return svg[svg.index("<svg"):]


def _rungs(evals: list[dict], goal: Goal, fidelity: tuple[int, ...]) -> list[dict[str, Any]]:
    """Per rung of successive halving: its epochs, trainings, failures, promotions out and values."""
    out = []
    trained = [r for r in evals if "duplicate_of" not in r]
    for rung, epochs in enumerate(fidelity):
        here = [r for r in trained if r.get("rung", 0) == rung]
        values = sorted(v for r in here if (v := goal.value(r)) is not None)
        best = (values[0] if goal.minimize else values[-1]) if values else None
        out.append({"rung": rung, "epochs": epochs, "trained": len(here),
                    "failed": sum(r.get("status") != "ok" for r in here),
                    "promoted": sum(r.get("rung") == rung + 1 for r in trained),
                    "best": best, "median": values[len(values) // 2] if values else None})
    return out


def _alternatives(evals: list[dict], goal: Goal, grammar: Any, shape: tuple[int, ...] | None,
                  cache: Cache) -> dict[str, Any]:
    """Each rule's alternatives: the grammar's probability, and the share of the rule's uses in the
    ``TOP`` best architectures (each architecture's best evaluation, as ``einc fit`` ranks them) and
    in the whole run (every distinct architecture, or ``SAMPLE`` of them evenly spaced)."""
    from einc.fit import _alt_name, _guard, prior_of

    scored: dict[str, tuple[tuple[int, float], int]] = {}
    for r in evals:
        s = goal.score(r)
        if s is not None and (r["arch"] not in scored or (s, -r["index"]) > (scored[r["arch"]][0],
                                                                             -scored[r["arch"]][1])):
            scored[r["arch"]] = (s, r["index"])
    top = [a for a, _ in sorted(scored.items(), key=lambda kv: (kv[1][0], -kv[1][1]), reverse=True)[:TOP]]
    distinct = list(dict.fromkeys(r["arch"] for r in evals))
    step = max(1, -(-len(distinct) // SAMPLE))
    run = distinct[::step]
    table = grammar.table
    mode = None
    if shape is not None:
        from einc.ops import feature_for

        mode = feature_for(tuple(shape)).mode
    top_n, run_n = _uses(top, table, mode, cache), _uses(run, table, mode, cache)
    prior = prior_of(table)
    rules = []
    for head, group in table.rules.items():
        for ri, rule in enumerate(group):
            rid = (head, ri)
            n_top = sum(top_n.get((rid, a), 0) for a in range(len(rule.alternatives)))
            n_run = sum(run_n.get((rid, a), 0) for a in range(len(rule.alternatives)))
            if not n_run and not n_top:
                continue
            name = head + (f"({', '.join(_guard(g) for g in rule.guards)})" if rule.guards else "")
            rules.append({"rule": name, "top": n_top, "run": n_run, "alts": [
                [_alt_name(alt, table), round(prior[rid][a], 4), top_n.get((rid, a), 0), run_n.get((rid, a), 0)]
                for a, alt in enumerate(rule.alternatives)]})
    return {"top": len(top), "run": len(run), "distinct": len(distinct), "rules": rules,
            "unparsed": sum(cache.uses.get(a) is None for a in {*top, *run})}


def _uses(archs: list[str], table: Any, mode: str | None, cache: Cache) -> dict[tuple[Any, int], int]:
    """Uses of each (rule, alternative) summed over ``archs``; an architecture that is not a
    derivation of ``table`` (another grammar's) counts nothing."""
    from einc.errors import EinError
    from einc.fit import count_uses

    total: dict[tuple[Any, int], int] = {}
    for text in archs:
        if text not in cache.uses:
            try:
                counts = count_uses([text], table, mode)
            except EinError:
                cache.uses[text] = None
                continue
            mine: dict[tuple[Any, int], int] = {}
            for (_, rid), row in counts.by_state.items():
                for alt, n in row.items():
                    mine[(rid, alt)] = mine.get((rid, alt), 0) + n
            cache.uses[text] = mine
        for k, n in (cache.uses[text] or {}).items():
            total[k] = total.get(k, 0) + n
    return total


def _blocks(archs: list[str], cache: Cache) -> list[str]:
    """The architectures' texts, one per line, deflated in blocks of ``BLOCK``; a full block is
    compressed once (keyed by its texts: a pending result's architecture may yet move)."""
    out, kept = [], {}
    for n in range(0, len(archs), BLOCK):
        block = tuple(archs[n:n + BLOCK])
        z = cache.blocks.get(block) or base64.b64encode(zlib.compress("\n".join(block).encode("utf-8"), 9)).decode()
        out.append(z)
        if len(block) == BLOCK:
            kept[block] = z
    cache.blocks = kept
    return out


# ---------------------------------------------------------------------- the page


def _page(data: dict[str, Any], title: str) -> str:
    blob = json.dumps(data, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")
    css = (ASSETS / "report_html.css").read_text(encoding="utf-8")
    js = (ASSETS / "report_html.js").read_text(encoding="utf-8")
    safe = title.replace("&", "&amp;").replace("<", "&lt;")
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n<title>{safe}</title>\n'
            f"<style>\n{css}</style>\n</head>\n<body>\n"
            f'<script id="data" type="application/json">{blob}</script>\n'
            f"<script>\n{js}</script>\n</body>\n</html>\n")
