"""report.html (runtime/report_html.py): built from a search's journal (fake evaluations, no training),
checked in Python, then rendered by headless Chromium, whose DOM and screenshot are checked.

The browser test is skipped only where no ``chromium`` is installed (the README's test command
installs it with apt-get where there is one).
"""

from __future__ import annotations

import base64
import fcntl
import json
import re
import shutil
import subprocess
import threading
import time
import warnings
import zlib

import pytest
from click.testing import CliRunner

from einc.cli import main
from einc.fmt import layout
from einc.notation import parse_syntax
from einc.runtime import report_html
from einc.runtime.goal import Goal
from einc.runtime.journal import Journal
from einc.runtime.search import SearchConfig, run_search

from conftest import TINY, FakeEvaluator

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def search(tmp_path_factory):
    """A finished multi-fidelity evolution of 14 trainings, some failed, on fake evaluations."""
    out = tmp_path_factory.mktemp("search")
    cfg = SearchConfig(strategy="re", population=4, tournament=2, fidelity=(1, 2), workers=2, **dict(TINY, budget=14))
    summary = run_search(cfg, out, evaluator=FakeEvaluator(2, fails=lambda a: zlib.crc32(a.encode()) % 5 == 0))
    return out, summary


def page_data(html: str) -> dict:
    blob = re.search(r'<script id="data" type="application/json">(.*?)</script>', html, re.S)
    assert blob is not None
    return json.loads(blob[1])


def inflate(data: dict) -> list[str]:
    return [a for z in data["archs"]["z"] for a in zlib.decompress(base64.b64decode(z)).decode().split("\n")]


def test_a_search_leaves_a_self_contained_page_of_its_journal(search):
    out, summary = search
    html = (out / "report.html").read_text(encoding="utf-8")
    assert not re.search(r'(?:src|href)\s*=\s*"(?!#)|<link|@import|url\((?!#)', html)  # nothing to fetch
    assert not [p.name for p in out.iterdir() if p.name.startswith(".report.html")]  # no temporary file left
    d = page_data(html)
    evals = sorted((r for r in Journal(out / "journal.jsonl").records() if r["kind"] == "eval"),
                   key=lambda r: r["index"])
    meta, ev = d["meta"], d["ev"]
    assert (meta["live"], meta["finished"], meta["metric"], meta["label"], meta["percent"], meta["minimize"]) == \
        (False, True, "val_acc", "accuracy", True, False)
    assert meta["fidelity"] == [1, 2] and meta["budget"] == 14
    assert ev["i"] == [r["index"] for r in evals]
    assert ev["ok"] == [int(r["status"] == "ok") for r in evals] and 0 in ev["ok"]
    assert ev["v"] == [r["metrics"].get("val_acc") if r["status"] == "ok" else None for r in evals]
    assert [ev["reasons"][k] if k >= 0 else None for k in ev["r"]] == [r.get("reason") for r in evals]
    archs = inflate(d)
    assert [archs[k] for k in ev["a"]] == [r["arch"] for r in evals] and len(archs) == len({r["arch"] for r in evals})
    assert d["pareto"]["params"] == [p["index"] for p in summary["pareto"]]
    assert d["pareto"]["flops"] == [p["index"] for p in summary["pareto_flops"]]
    best = d["best"]
    assert best["index"] == summary["best_index"] and best["value"] == summary["best_val_acc"]
    assert best["text"] == (out / "best.arch").read_text().strip() and best["formatted"] == layout(
        parse_syntax(best["text"]))
    assert best["svg"].startswith("<svg") and "derivation tree" in best["svg"]
    assert d["progress"]["trained"] == summary["trained"] == 14 and d["progress"]["failed"] == summary["failed"]
    rungs = d["rungs"]
    assert [g["epochs"] for g in rungs] == [1, 2] and sum(g["trained"] for g in rungs) == 14
    assert rungs[0]["promoted"] == rungs[1]["trained"] == summary["promotions"] > 0
    alts = d["alternatives"]
    assert alts["top"] == min(10, len({r["arch"] for r in evals if r["status"] == "ok"}))
    assert alts["run"] == alts["distinct"] == len(archs) and alts["unparsed"] == 0 and alts["rules"]
    for rule in alts["rules"]:
        assert sum(a[2] for a in rule["alts"]) == rule["top"] and sum(a[3] for a in rule["alts"]) == rule["run"]
        assert sum(a[1] for a in rule["alts"]) == pytest.approx(1, abs=1e-3)
    assert alts["rules"][0]["rule"] == "S" and alts["rules"][0]["run"] == len(archs)  # one start per network


def test_einc_report_rebuilds_the_same_page_from_the_journal(search, tmp_path):
    out, _ = search
    copy = tmp_path / out.name
    shutil.copytree(out, copy)
    (copy / "report.html").unlink()
    r = CliRunner().invoke(main, ["report", str(copy)])
    assert r.exit_code == 0 and f"page: {copy / 'report.html'}" in r.output, r.output
    before, after = (page_data((d / "report.html").read_text()) for d in (out, copy))
    for d in (before, after):
        del d["meta"]["generated"]
        assert d["best"].pop("svg").startswith("<svg")  # matplotlib's SVG differs in its ids and date
    assert after == before


def test_a_running_search_page_reloads_and_is_rewritten_at_most_once_a_second(search, tmp_path, monkeypatch):
    out, _ = search
    folder = tmp_path / "live"
    shutil.copytree(out, folder)
    config = SearchConfig.load(folder / "config.json")
    writes: list[tuple[float, bool]] = []
    real = report_html.write
    monkeypatch.setattr(report_html, "write", lambda path, text: (writes.append(
        (time.monotonic(), page_data(text)["meta"]["live"])), real(path, text)))
    page = report_html.LivePage(folder, config, config.goal(), None, None)
    start = time.monotonic()
    for _ in range(5):  # a burst: one rewrite, a second after the page was made
        page.update()
    deadline = start + 20
    while not writes and time.monotonic() < deadline:
        time.sleep(0.05)
    page.update()  # the next one waits its turn
    while len(writes) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    page.finish()
    assert len(writes) == 3 and [w[1] for w in writes] == [True, True, False]
    assert writes[0][0] - start >= 1 and writes[1][0] - writes[0][0] >= 1
    assert page_data((folder / "report.html").read_text())["meta"]["live"] is False


def test_a_failing_rewrite_warns_and_never_stops_the_search(search, tmp_path, monkeypatch):
    out, _ = search
    config = SearchConfig.load(out / "config.json")

    def broken(*args, **kwargs):
        raise ValueError("no page today")

    monkeypatch.setattr(report_html, "build", broken)
    page = report_html.LivePage(tmp_path, config, config.goal(), None, None)
    page._next = 0.0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        page.update()
        page._thread.join(20)
        assert page._closed and not page._thread.is_alive()
        page.finish()
    assert [str(w.message) for w in caught] == [f"{tmp_path / 'report.html'}: warning: not rewritten "
                                                "(ValueError: no page today)"] * 2


def test_running_reads_the_search_lock_without_taking_it(tmp_path):
    assert not report_html.running(tmp_path)
    with open(tmp_path / ".lock", "a") as f:
        assert not report_html.running(tmp_path)
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert report_html.running(tmp_path)
        got = []
        t = threading.Thread(target=lambda: got.append(report_html.running(tmp_path)))
        t.start()
        t.join()
        assert got == [True]
    assert not report_html.running(tmp_path)


def test_a_minimised_metric_is_named_and_ranked_lower_first():
    records = [{"kind": "session", "started": 10.0, "workers": 1}] + [
        {"index": i, "kind": "eval", "arch": f"linear(d={16 * (i + 1)})", "origin": "sample", "parent": None,
         "status": "ok", "metrics": {"val_rel_l2": v}, "params": 100 * (i + 1), "flops": 10, "seconds": 1.0,
         "started": 10.0 + i, "finished": 11.0 + i, "worker": "0"} for i, v in enumerate((0.5, 0.2, 0.3))]
    d = page_data(report_html.build(records, SearchConfig(strategy="rs"), Goal("val_rel_l2", True), live=True))
    assert (d["meta"]["label"], d["meta"]["minimize"], d["meta"]["percent"], d["meta"]["live"]) == \
        ("relative l2", True, False, True)
    assert d["best"]["index"] == 1 and d["pareto"]["params"] == [0, 1]
    assert d["alternatives"] is None and d["best"]["svg"] == "" and d["progress"]["in_flight"] == 0


def chromium(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--virtual-time-budget=5000", *args], capture_output=True, text=True, timeout=120,
                          check=True)


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="no chromium (Debian: apt-get install chromium)")
def test_chromium_renders_the_charts_the_drawing_and_the_table(search, tmp_path):
    out, _ = search
    d = page_data((out / "report.html").read_text())
    n = len(d["ev"]["i"])
    chosen = d["pareto"]["params"][-1]
    dom = chromium("--dump-dom", (out / "report.html").as_uri() + f"#eval-{chosen}").stdout
    errors = re.search(r'<pre id="errors"([^>]*)>(.*?)</pre>', dom, re.S)
    assert errors is not None and errors[2] == "" and "hidden" in errors[1], errors and errors[2]
    assert re.search(r'data-rendered="\d+"', dom) and f'data-archs="{len(inflate(d))}"' in dom
    charts = dict(re.findall(r'<div id="([a-z-]+)" data-points="(\d+)"', dom))
    trained = sum(x is None for x in d["ev"]["d"])
    assert charts["by-training"] == str(trained) and int(charts["pareto"]) > 0
    assert dom.count('<path class="best"') == 2 and dom.count('<path class="front"') == 1
    assert dom.count('class="front"') >= 1 + len(d["pareto"]["params"])  # the line and its points
    table = re.search(r'<table id="trials">(.*?)</table>', dom, re.S)[1]
    assert table.count("<tr data-r=") == n and "<th" in table
    assert re.search(r'<div id="drawing"><svg', dom) and "derivation tree" in dom
    assert 'id="rungs"' in dom and 'id="alts"' in dom
    arch = inflate(d)[d["ev"]["a"][d["ev"]["i"].index(chosen)]]
    shown = re.search(r'<pre class="wrap" id="detail-arch">(.*?)</pre>', dom, re.S)[1]
    assert shown.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&") == arch

    shot = tmp_path / "report.png"
    chromium(f"--screenshot={shot}", "--window-size=1400,3000", (out / "report.html").as_uri())
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)[:, :, :3]
    assert pixels.shape[:2] == (3000, 1400)
    red = ((abs(pixels - [0xC0 / 255, 0x39 / 255, 0x2B / 255]) < 0.06).all(axis=2)).sum()  # best-so-far lines
    assert red > 500 and pixels.std() > 0.1  # charts drawn, not a blank page
