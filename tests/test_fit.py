"""einc fit: counting uses state by state, the Dirichlet posterior, consistency, the written .ein."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys

import pytest

import einc
from einc.ein import compile_ein
from einc.fit import FitError, count_uses, fit_grammar
from einc.grammar import EINSPACE
from einc.sample import Budget, Sampler

TEXT = EINSPACE.read_text(encoding="utf-8")
PATH = str(EINSPACE)
G = einc.load("einspace")
T = G.table


def _rule(table, head, **env):
    full = {"m": "Im", "b": 1, **env}
    rules = table.rules[head]
    ri = next(i for i, r in enumerate(rules) if r.matches(full))
    return (head, ri), rules[ri]


def _index(rule, label=None, op=None, args=()):
    for i, a in enumerate(rule.alternatives):
        if label is not None and a.label == label:
            return i
        if op is not None and a.label is None and len(a.body) == 1 and getattr(a.body[0], "op", None) == op \
                and a.body[0].args == tuple(sorted(args)):
            return i
    raise AssertionError((label, op, args))


def _prob(table, head, label=None, op=None, args=(), **env):
    _, rule = _rule(table, head, **env)
    return rule.alternatives[_index(rule, label, op, args)].prob


# ---------------------------------------------------------------- counting


def test_counts_by_state_and_pooled_per_rule():
    c = count_uses(["sequential(relu, branching(clone(b=2), [linear(d=16), relu], add))",
                    "routing(im2col(k=4, s=4, p=0), linear(d=64), identity)"], T)
    assert c.trees == 2
    pooled = c.per_rule()
    mid, m_rule = _rule(T, "M")
    assert pooled[mid] == {_index(m_rule, label="branching"): 1, 3: 4}  # 3 = "C", 4 uses: 3 Im + 1 Col
    states = c.states_of(mid)
    assert states == {("M", "Im", 1, ()): 4, ("M", "Col", 1, ()): 1}
    cid, c_rule = _rule(T, "C")
    assert pooled[cid][_index(c_rule, op="relu")] == 2
    assert pooled[cid][_index(c_rule, op="linear", args=(("d", 16),))] == 1
    assert pooled[cid][_index(c_rule, op="linear", args=(("d", 64),))] == 1
    aid, a_rule = _rule(T, "A", b=2)
    assert pooled[aid] == {_index(a_rule, op="add"): 1}
    r1, r1_rule = _rule(T, "R1")
    assert pooled[r1] == {_index(r1_rule, op="im2col", args=(("k", 4), ("s", 4), ("p", 0))): 1}
    r2, _ = _rule(T, "R2", m="Col")
    assert sum(pooled[r2].values()) == 1  # identity in Col mode: the m=Col rule, not the Im one


def test_a_repeated_subtree_counts_once():
    c = count_uses(["branching(clone(b=4), [sequential(relu, norm)]*4, add)"], T)
    cid, _ = _rule(T, "C")
    assert sum(c.per_rule()[cid].values()) == 2
    aid, _ = _rule(T, "A", b=4)
    assert sum(c.per_rule()[aid].values()) == 1


def test_a_string_of_another_grammar_is_a_located_error():
    from einc.errors import ArchError

    with pytest.raises(ArchError):
        count_uses(["sequential(relu, nope)"], T)


# ---------------------------------------------------------------- fitting and writing


def test_posterior_mean_and_untouched_rules():
    archs = ["sequential(relu, linear(d=16))", "sequential(linear(d=16), linear(d=16))"]
    f = fit_grammar(TEXT, PATH, archs, strength=4.0, header=["hello"])
    # M: 4 uses, all C. p(C) = (4 + 4 * 0.32) / (4 + 4)
    _, m_rule = _rule(f.table, "M")
    assert m_rule.alternatives[3].prob == pytest.approx((4 + 4 * 0.32) / 8, abs=6e-4)
    assert m_rule.alternatives[0].prob == pytest.approx(4 * 0.68 / 3 / 8, abs=6e-4)
    # C: relu 1, linear16 3 of 4; prior 1/13 each
    assert _prob(f.table, "C", op="linear", args=(("d", 16),)) == pytest.approx((3 + 4 / 13) / 8, abs=6e-4)
    assert _prob(f.table, "C", op="relu") == pytest.approx((1 + 4 / 13) / 8, abs=6e-4)
    assert _prob(f.table, "C", op="linear", args=(("d", 32),)) == pytest.approx((4 / 13) / 8, abs=6e-4)
    # rules without uses keep their text exactly; comments and the header are there
    assert "A(b=4) -> add | concat(dim in {1, 2, 3}, b=4)\n" in f.text
    assert "R1(m=Col) -> identity | permute(o=(2, 1))\n" in f.text
    assert f.text.startswith("# hello\n")
    for line in TEXT.splitlines():
        if line.lstrip().startswith("#"):
            assert line in f.text
    # the variants of C's linear differ, so they are written one per line
    assert re.search(r"\n   \| linear\(d=16\) @ 0\.4\d*\n", f.text)
    assert "linear(d in" not in f.text
    # every rule sums to 1 and the grammar is consistent (compile_ein checks both)
    assert compile_ein(f.text, "tuned.ein").rules["M"]
    assert f.rho < 1 and f.shrink == 0


def test_unsplit_variants_keep_their_set():
    # clone(b=2) and clone(b=4) used once each, clone(b=8) not: they differ, so they split;
    # matmul's two variants are never used: equal probabilities, one alternative with one @
    f = fit_grammar(TEXT, PATH, ["branching(clone(b=2), [relu, relu], add)"], strength=10.0)
    assert "matmul(scaled in {false, true}) @" in f.text
    assert "| clone(b=2) @" in f.text or "-> clone(b=2) @" in f.text


def test_an_inconsistent_fit_is_shrunk_to_rho_099():
    chain = "sequential(" + ", ".join(["relu"] * 400) + ")"
    f = fit_grammar(TEXT, PATH, [chain], strength=1.0)
    assert f.rho_fit > 0.99
    assert 0 < f.shrink < 1
    assert 0.95 < f.rho <= 0.99  # the smallest shrink that keeps the written grammar at 0.99: close to it
    assert compile_ein(f.text, "tuned.ein") is not None and f.table is not None
    assert "shrunk towards the prior" in f.text
    assert compile_ein(f.text, "tuned.ein") is not None


def test_bad_strength_and_includes():
    with pytest.raises(FitError):
        fit_grammar(TEXT, PATH, ["sequential(relu, relu)"], strength=0.0)
    with pytest.raises(FitError):
        fit_grammar(TEXT, PATH, [], strength=1.0)


def test_includes_are_refused(tmp_path):
    (tmp_path / "c.ein").write_text("C -> relu | norm\n")
    main = tmp_path / "g.ein"
    main.write_text('include "c.ein"\nstart S(shape=(3, 8, 8))\nS -> sequential: C C | C\n')
    with pytest.raises(FitError, match="include"):
        fit_grammar(main.read_text(), str(main), ["sequential(relu, norm)"])


def test_the_fitted_grammar_loads_and_samples(tmp_path):
    s = Sampler(T, (2, 8, 8), Budget(max_flops=30_000_000))
    rng = random.Random(3)
    from einc.notation import show

    archs = [show(s.sample(rng)) for _ in range(8)]
    f = fit_grammar(TEXT, PATH, archs, strength=5.0)
    out = tmp_path / "tuned.ein"
    out.write_text(f.text)
    g = einc.load(str(out))
    assert g.hash != G.hash
    tuned = Sampler(g.table, (2, 8, 8), Budget(max_flops=30_000_000))
    trees = [tuned.sample(random.Random(i)) for i in range(5)]
    assert all(g.parse(show(t), (2, 8, 8)).tree == t for t in trees)


def test_search_uses_a_fitted_grammar(tmp_path):
    from einc.runtime.search import SearchConfig, run_search
    from einc.runtime.workers import Outcome

    class Instant:
        def __init__(self):
            self.jobs = []

        def submit(self, job):
            self.jobs.append(job)

        def results(self):
            while self.jobs:
                job = self.jobs.pop(0)
                yield Outcome(job.key, "ok", {"metrics": {"val_acc": 0.5, "test_acc": 0.5, "epochs": 1}})

        def close(self):
            pass

    f = fit_grammar(TEXT, PATH, ["sequential(relu, linear(d=16))"], strength=5.0)
    path = tmp_path / "tuned.ein"
    path.write_text(f.text)
    run_search(SearchConfig(grammar=str(path), strategy="sample", budget=3, max_flops=30_000_000),
               tmp_path / "run", evaluator=Instant())
    records = [json.loads(line) for line in (tmp_path / "run" / "journal.jsonl").read_text().splitlines()]
    evals = [r for r in records if r.get("kind", "eval") == "eval"]
    assert len(evals) == 3 and all(r["grammar_hash"] == einc.load(str(path)).hash for r in evals)


# ---------------------------------------------------------------- the command


def _journal(folder, rows, config=None):
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "journal.jsonl", "w") as f:
        f.writelines((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    return folder / "journal.jsonl"


def _run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "einc.cli", *args], capture_output=True, text=True, cwd=cwd,
                          check=False)


ROWS = [
    {"index": 0, "kind": "eval", "arch": "sequential(relu, linear(d=16))", "status": "ok", "metrics": {"val_acc": 0.9}},
    {"index": 1, "kind": "eval", "arch": "sequential(norm, relu)", "status": "ok", "metrics": {"val_acc": 0.2}},
    {"index": 2, "kind": "eval", "arch": "sequential(softmax, softmax)", "status": "failed", "metrics": {}},
    {"index": 3, "kind": "eval", "arch": "sequential(relu, linear(d=16))", "status": "ok",
     "metrics": {"val_acc": 0.9}, "duplicate_of": 0},
    {"index": 4, "kind": "eval", "arch": "sequential(linear(d=32), relu)", "status": "ok", "metrics": {"val_acc": 0.8}},
    {"index": 5, "kind": "final", "arch": "sequential(pos-enc, pos-enc)", "status": "ok",
     "metrics": {"test_acc": 0.99, "val_acc": 0.99}},
]


def test_cli_fits_the_top_k(tmp_path):
    journal = _journal(tmp_path / "run", ROWS, {"grammar": "einspace"})
    out = tmp_path / "tuned.ein"
    r = _run("fit", str(tmp_path / "run"), "-o", str(out), "--top", "2", "--strength", "2")
    assert r.returncode == 0, r.stderr
    assert "the 2 best of 3" in r.stdout and "spectral radius" in r.stdout
    text = out.read_text()
    assert str(journal) in text and "K=2" in text and "S=2" in text
    t = compile_ein(text, str(out))
    # the two best (distinct) are index 0 and 4: linear 16 and 32 used once, norm/softmax/pos-enc never
    assert _prob(t, "C", op="linear", args=(("d", 16),)) == pytest.approx((1 + 2 / 13) / 6, abs=6e-4)
    assert _prob(t, "C", op="linear", args=(("d", 32),)) == pytest.approx((1 + 2 / 13) / 6, abs=6e-4)
    assert _prob(t, "C", op="norm") == pytest.approx((2 / 13) / 6, abs=6e-4)
    assert _run("check", str(out)).returncode == 0


def test_cli_fits_to_the_best_by_the_searchs_own_metric(tmp_path):
    """A minimised objective: the best is the lowest score, not the highest val_acc."""
    rows = [{**r, "metrics": {"score": r["metrics"]["val_acc"]}} if r["kind"] == "eval" and r["metrics"] else r
            for r in ROWS]
    _journal(tmp_path / "run", rows, {"grammar": "einspace", "objective": "f.py:f", "minimize": True,
                                      "input_shape": [1, 8, 8], "data": None, "lag": 8})
    out = tmp_path / "tuned.ein"
    r = _run("fit", str(tmp_path / "run"), "-o", str(out), "--top", "1")
    assert r.returncode == 0, r.stderr
    assert "score 0.2000 to 0.2000" in r.stdout  # index 1, sequential(norm, relu): the lowest score
    t = compile_ein(out.read_text(), str(out))
    assert _prob(t, "C", op="norm") > _prob(t, "C", op="linear", args=(("d", 16),))


def test_cli_takes_the_grammar_from_config(tmp_path):
    g = tmp_path / "tiny.ein"
    g.write_text("start S(shape=(3, 8, 8))\n# keep me\nS -> sequential: C C | C\nC -> relu | norm\n")
    _journal(tmp_path / "run", [{"index": 0, "arch": "sequential(relu, relu)", "status": "ok",
                                 "metrics": {"val_acc": 0.5}}], {"grammar": str(g)})
    out = tmp_path / "t.ein"
    r = _run("fit", str(tmp_path / "run" / "journal.jsonl"), "-o", str(out), "--strength", "1")
    assert r.returncode == 0, r.stderr
    t = compile_ein(out.read_text(), str(out))
    assert "# keep me" in out.read_text()
    assert t.rules["C"][0].alternatives[0].prob == pytest.approx((2 + 0.5) / 3, abs=6e-4)


@pytest.mark.parametrize("case,code,needle", [
    ("missing", 1, "no such journal"),
    ("corrupt", 1, "journal.jsonl:2"),
    ("empty", 1, "no evaluated architecture"),
    ("foreign", 1, "record 0"),
    ("top0", 2, "--top"),
    ("strength0", 2, "--strength"),
    ("no-output", 2, "-o"),
    ("bad-config", 1, "config.json"),
    ("device-grammar", 1, "not a regular file"),  # -g /dev/zero used to read forever
])
def test_cli_bad_input_is_one_located_line(tmp_path, case, code, needle):
    run = tmp_path / "run"
    good = [ROWS[0]]
    args = ["-o", str(tmp_path / "t.ein")]
    if case == "corrupt":
        _journal(run, [ROWS[0], '{"index": 1, "arch": '])
        (run / "journal.jsonl").write_text((run / "journal.jsonl").read_text() + json.dumps(ROWS[1]) + "\n")
    elif case == "empty":
        _journal(run, [ROWS[2]])
    elif case == "foreign":
        _journal(run, [{"index": 0, "arch": "sequential(relu, frobnicate)", "status": "ok",
                        "metrics": {"val_acc": 0.5}}])
    elif case == "bad-config":
        _journal(run, good)
        (run / "config.json").write_text("{not json")
    elif case != "missing":
        _journal(run, good)
    if case == "top0":
        args += ["--top", "0"]
    if case == "strength0":
        args += ["--strength", "0"]
    if case == "no-output":
        args = []
    if case == "device-grammar":
        args += ["-g", "/dev/zero"]
    r = _run("fit", str(run), *args)
    assert r.returncode == code, (r.stdout, r.stderr)
    assert needle in r.stderr
    assert "Traceback" not in r.stderr
    if code == 1:
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
