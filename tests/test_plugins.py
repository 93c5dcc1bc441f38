"""Operations from plugins: an Op checks itself, names its modules, gives its finite effect and
its parameters' init; the example plugin and the extended einspace work in every command."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from hypothesis import example, given, settings
from hypothesis import strategies as st

import einc
from einc.cli import load_plugins, main
from einc.emit import emit, load_source
from einc.errors import ArchError, EinCheckError, LoweringError
from einc.notation import show
from einc.ops import BUILTIN, IM, Feature, NotApplicable, Op, OpError, Param
from einc.sample import Sampler
from einc.summary import rows

ROOT = Path(__file__).resolve().parent.parent
PLUGIN = ROOT / "examples" / "plugin" / "pool3.py"
PLUS = ROOT / "examples" / "plugin" / "einspace_plus.ein"


def _same(features, **_):
    return features


@pytest.fixture(scope="module")
def plus():
    return einc.load(PLUS, load_plugins((str(PLUGIN),)))


# ---------------------------------------------------------------- Op checks itself


@pytest.mark.parametrize("kwargs, message", [
    ({"name": "Pool"}, "operation name 'Pool' is not lowercase"),
    ({"group": "pooling"}, 'group "pooling" is not one of branching'),
    ({"params": (("k", 3),)}, "params is a tuple of einc.ops.Param"),
    ({"params": (Param("k", "1", bool), Param("k", "1", bool))}, "declared twice"),
    ({"infer": None}, "infer is not callable"),
    ({"lower": "torch.relu"}, "lower is not callable"),
    ({"hint": "My-Pool"}, "hint 'My-Pool' is not a lowercase Python identifier"),
])
def test_an_op_checks_itself(kwargs, message):
    args = {"name": "pool", "group": "computation", "params": (), "infer": _same, **kwargs}
    with pytest.raises(OpError, match=message):
        Op(**args)


def test_a_misspelt_group_in_a_plugin_is_one_located_line(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from einc.ops import Op\n\n\ndef _same(features):\n    return features\n\n\n"
                   "OPS = [Op('pool', 'pooling', (), _same)]\n")
    r = CliRunner().invoke(main, ["sample", "einspace", "-n", "1", "--plugin", str(bad)])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert r.output.strip() == (f'{bad}:8: error: cannot load plugin: operation "pool": group "pooling" is not one '
                                "of branching, aggregation, routing, computation")


def test_a_failing_shape_rule_names_the_op():
    boom = Op("boom", "computation", (), lambda features: 1 / 0)
    with pytest.raises(OpError, match='operation "boom": its shape rule failed on Im.3x8x8.: ZeroDivisionError'):
        boom.apply((Feature((3, 8, 8), IM),), ())


# ---------------------------------------------------------------- one definition: hint, init, effect


def _lower_scaled(ctx, nodes, features):
    p = torch.nn.Parameter(torch.full((features[0].shape[0], 1, 1), 0.5))
    return [ctx.call("mul", nodes[0], ctx.parameter("gain", p, init="torch.full((3, 1, 1), 0.5)"))]


def _lower_no_init(ctx, nodes, features):
    p = torch.nn.Parameter(torch.ones(1))
    return [ctx.call("mul", nodes[0], ctx.parameter("gain", p))]


def test_summary_names_come_from_the_op_hint():
    lib = BUILTIN.extend([Op("scaled", "computation", (), _same, lower=_lower_scaled, hint="gain")])
    g = einc.compile_grammar("start S(shape=(3, 8, 8))\nS -> seq: scaled scaled relu\n", "g.ein", lib)
    arch = g.parse("seq(scaled, scaled, relu)", (3, 8, 8))
    gm = einc.build(arch, (3, 8, 8), optimize=False)
    names = [r.name for r in rows(arch.infer((3, 8, 8)), lib, tree=arch.tree)]
    assert names == ["gain_0", "gain_1", "relu_0"]
    assert {"gain_0", "gain_1"} <= dict(gm.named_parameters()).keys()
    # the emitted file initialises the parameter as the built model did (not with zeros)
    net = load_source(emit(gm), "Net")["Net"]()
    assert torch.equal(net.state_dict()["gain_0"], gm.state_dict()["gain_0"])


def test_a_hook_using_another_hint_or_no_init_is_refused():
    lib = BUILTIN.extend([Op("scaled", "computation", (), _same, lower=_lower_scaled),
                          Op("bare", "computation", (), _same, lower=_lower_no_init, hint="gain")])
    g = einc.compile_grammar("start S(shape=(3, 8, 8))\nS -> scaled | bare\n", "g.ein", lib)
    with pytest.raises(LoweringError, match='"scaled" names a module or parameter "gain", but its hint is "scaled"'):
        einc.build(g.parse("scaled", (3, 8, 8)), (3, 8, 8))
    with pytest.raises(LoweringError, match='"bare" makes parameter "gain" without init='):
        einc.build(g.parse("bare", (3, 8, 8)), (3, 8, 8))


def test_the_example_plugin_emits_what_it_builds(plus):
    arch = plus.parse("sequential(scale(init=1), pool3)", (3, 24, 24))
    gm = einc.build(arch, (3, 24, 24), num_classes=4)
    net = load_source(emit(gm), "Net")["Net"]()
    assert torch.equal(net.state_dict()["scale_0"], torch.full((3, 1, 1), 0.1))
    assert torch.equal(net.state_dict()["scale_0"], gm.state_dict()["scale_0"])
    net.load_state_dict(gm.state_dict())
    x = torch.randn(2, 3, 24, 24)
    assert torch.allclose(net(x), gm(x))


def _pool2(features):
    (f,) = features
    if f.shape[1] % 2 or f.shape[2] % 2:
        raise NotApplicable("pool2 needs even H and W")
    return (Feature((f.shape[0], f.shape[1] // 2, f.shape[2] // 2), IM),)


def test_an_op_may_give_its_own_finite_effect():
    never = Op("sq", "computation", (), _pool2, effect=lambda mode, b: None)
    im_only = Op("sq2", "computation", (), _pool2, effect=lambda mode, b: (mode, b) if mode == IM and b == 1 else None)
    assert never.finite_effect(IM, 1, ()) is None and im_only.finite_effect(IM, 1, ()) == (IM, 1)
    assert im_only.finite_effect("Col", 1, ()) is None
    with pytest.raises(OpError, match="effect returned 'Im', not"):
        Op("odd", "computation", (), _pool2, effect=lambda mode, b: "Im").finite_effect(IM, 1, ())
    lib = BUILTIN.extend([never, im_only])
    g = einc.compile_grammar("start S(shape=(3, 8, 8))\nS -> sq | sq2\n", "g.ein", lib)
    # the sampler keeps to the finite effect, so it never draws what the parser would refuse
    sampler = Sampler(g.table, (3, 8, 8))
    assert {show(sampler.sample(random.Random(i))) for i in range(20)} == {"sq2"}
    with pytest.raises(ArchError, match='"sq" does not apply in mode Im with b=1'):
        g.parse("sq", (3, 8, 8))


# ---------------------------------------------------------------- the extended einspace


def test_extend_adds_alternatives_with_the_usual_shares(plus):
    (c,) = plus.table.rules["C"]
    assert len(c.alternatives) == 16 and {a.body[0].op for a in c.alternatives[-3:]} == {"gelu", "pool3", "scale"}
    assert all(abs(a.prob - 1 / 16) < 1e-12 for a in c.alternatives)


def test_override_replaces_and_errors_are_located(tmp_path):
    text = 'include "einspace.ein"\noverride C -> relu | norm @ 0.25\n'
    (c,) = einc.compile_grammar(text, str(tmp_path / "g.ein")).table.rules["C"]
    assert [(a.body[0].op, a.prob) for a in c.alternatives] == [("relu", 0.75), ("norm", 0.25)]
    with pytest.raises(EinCheckError) as e:
        einc.compile_grammar('include "einspace.ein"\nextend Cc -> relu\n', str(tmp_path / "g.ein"))
    assert str(e.value).splitlines()[0] == (f'{tmp_path / "g.ein"}:2:8: error: extend of "Cc", which has no rule '
                                            'above it; did you mean "C"?  [undefined-symbol]')


def test_every_sampled_string_of_the_extended_space_compiles(plus):
    """Sampler and parser agree by construction: pool3 needs H, W divisible by 3 (paper space at 3x24x24)."""
    sampler = Sampler(plus.table, (3, 24, 24), einc.Budget(max_nodes=80, max_params=300_000))
    rng = random.Random(0)
    seen: set[str] = set()
    for _ in range(40):
        text = show(sampler.sample(rng))
        arch = plus.parse(text, (3, 24, 24))  # an ArchError here is the bug of issue 11
        arch.infer((3, 24, 24))
        seen |= {op for op in ("gelu", "pool3", "scale") if op in text}
    assert seen == {"gelu", "pool3", "scale"}
    model = einc.build(plus.parse("sequential(pool3, gelu)", (3, 24, 24)), (3, 24, 24), num_classes=3)
    assert model(torch.randn(2, 3, 24, 24)).shape == (2, 3)


def test_every_command_takes_the_plugin(tmp_path):
    p = ["--plugin", str(PLUGIN)]
    run = CliRunner().invoke
    r = run(main, ["check", str(PLUS), *p])
    assert r.exit_code == 0, r.output
    r = run(main, ["sample", str(PLUS), "--input", "3,24,24", "-n", "3", "--seed", "1", *p])
    assert r.exit_code == 0, r.output
    arch = "sequential(pool3, scale(init=1))"
    r = run(main, ["compile", arch, "-g", str(PLUS), "--input", "3,24,24", "--summary", *p])
    assert r.exit_code == 0 and "pool3_0" in r.output and "scale_0" in r.output, r.output
    r = run(main, ["stats", str(PLUS), "--input", "3,24,24", "-n", "5", "--max-nodes", "60", *p])
    assert r.exit_code == 0, r.output
    (tmp_path / "a.arch").write_text(arch + "\n")
    r = run(main, ["fmt", str(tmp_path / "a.arch"), "-g", str(PLUS), "--check", *p])
    assert r.exit_code == 0, r.output
    r = run(main, ["draw", arch, "-g", str(PLUS), "--input", "3,24,24", "-o", str(tmp_path / "a.svg"), *p])
    assert r.exit_code == 0, r.output
    for cmd in ("check", "compile", "sample", "stats", "draw", "fmt", "fit", "search"):
        assert "--plugin" in run(main, [cmd, "--help"]).output, cmd


def test_search_runs_on_the_extended_space(tmp_path, fake_evaluator):
    from einc.runtime.search import SearchConfig, run_search

    config = SearchConfig(grammar=str(PLUS), data="digits", strategy="re", budget=6, population=3, tournament=2,
                          epochs=1, seed=0, plugins=(str(PLUGIN),), max_nodes=60)
    summary = run_search(config, tmp_path / "run", evaluator=fake_evaluator())
    assert summary["best_index"] is not None


def test_fit_takes_the_plugin(tmp_path):
    import json

    run = tmp_path / "run"
    run.mkdir()
    archs = ["sequential(pool3, gelu)", "gelu", "sequential(gelu, relu)"]
    with (run / "journal.jsonl").open("w") as f:
        for i, a in enumerate(archs):
            f.write(json.dumps({"kind": "eval", "index": i, "status": "ok", "arch": a,
                                "metrics": {"val_acc": 0.5 + i / 10}}) + "\n")
    flat = tmp_path / "plus.ein"  # fit rewrites one file: the extension written out in full
    flat.write_text("start S(shape=(3, 24, 24))\nS -> sequential: S S @ 0.3\n   | C\nC -> relu | gelu | pool3\n")
    r = CliRunner().invoke(main, ["fit", str(run), "-o", str(tmp_path / "out.ein"), "-g", str(flat)])
    assert r.exit_code == 1 and 'unknown operation "gelu"' in r.output
    r = CliRunner().invoke(main, ["fit", str(run), "-o", str(tmp_path / "out.ein"), "-g", str(flat),
                                  "--plugin", str(PLUGIN)])
    assert r.exit_code == 0, r.output
    # a search's config.json names its grammar and plugins: fit reads both
    (run / "config.json").write_text(json.dumps({"grammar": str(flat), "plugins": [str(PLUGIN)]}))
    r = CliRunner().invoke(main, ["fit", str(run), "-o", str(tmp_path / "out2.ein")])
    assert r.exit_code == 0, r.output
    assert "gelu" in (tmp_path / "out2.ein").read_text()


# ---------------------------------------------------------------- small bugs


def test_class_name_keyword_is_a_usage_error():
    r = CliRunner().invoke(main, ["compile", "relu", "--input", "3,8,8", "--class-name", "class"])
    assert r.exit_code == 2 and '"class" is a Python keyword' in r.output


def test_duplicate_rule_message_without_a_span():
    from dataclasses import replace

    from einc.checks import check_overlapping_rules
    from einc.errors import Diagnostic

    table = einc.compile_grammar("start S(shape=(3, 8, 8))\nS(m=Im) -> relu\nS(m=Col) -> norm\n").table
    r1, r2 = table.rules["S"]
    rules = {"S": (replace(r1, guards=(), span=None), r2)}
    t = type(table)(table.path, table.start, table.params, rules, table.library, table.source)
    (d,) = check_overlapping_rules(t, lambda span, code, msg: Diagnostic(span, "error", code, msg))
    assert d.message == 'a second rule for "S" that also applies when m=Col, b=1'


def test_a_very_deep_tree_builds():
    g = einc.compile_grammar("start S(shape=(4, 8))\nS -> routing: identity S identity @ 0.5\n  | relu\n")
    text = "routing(identity, " * 1500 + "relu" + ", identity)" * 1500
    arch = g.parse(text, (4, 8))
    gm = einc.build(arch, (4, 8))
    assert gm(torch.randn(2, 4, 8)).shape == (2, 4, 8)
    assert sys.getrecursionlimit() < 3000  # the tree is deeper than Python's recursion limit


def _pool_op(k: int) -> Op:
    def infer(features):
        (f,) = features
        if f.mode != IM or f.shape[1] % k or f.shape[2] % k:
            raise NotApplicable(f"pool{k} needs Im features with H and W divisible by {k}")
        return (Feature((f.shape[0], f.shape[1] // k, f.shape[2] // k), IM),)

    return Op(f"pool{k}", "computation", (), infer)


@settings(max_examples=25)
@given(k=st.integers(2, 19), cells=st.integers(1, 6), seed=st.integers(0, 10_000))
@example(k=17, cells=1, seed=0)
def test_sampler_and_parser_agree_over_plugin_ops(k, cells, seed):
    """Whatever divisibility a plugin's rule needs (past 16 the stand-in refuses it: never
    sampled, never parsed), every sampled string parses back and infers at the real input."""
    lib = BUILTIN.extend([_pool_op(k)])
    g = einc.compile_grammar(f"start S(shape=(3, 8, 8))\nS -> sequential: S S @ 0.4\n  | pool{k} @ 0.3 | relu\n"
                             "  | conv: im2col(k=1, s=1, p=0) linear(d=4) col2im\n", "g.ein", lib)
    shape = (3, k * cells, k * cells)
    sampler = Sampler(g.table, shape, einc.Budget(max_nodes=40))
    rng = random.Random(seed)
    for _ in range(8):
        text = show(sampler.sample(rng))
        g.parse(text, shape).infer(shape)


def test_show_writes_a_plugin_ops_arguments_in_its_own_order():
    zigzag = Op("zigzag", "computation", (Param("z", "an int", lambda v: type(v) is int),
                                          Param("a", "an int", lambda v: type(v) is int)), _same)
    g = einc.compile_grammar("start S(shape=(3, 8, 8))\nS -> zigzag(a=1, z=2)\n", "g.ein", BUILTIN.extend([zigzag]))
    assert g.sample(seed=0).text == "zigzag(z=2, a=1)"


def test_emit_refuses_a_parameter_without_init():
    gm = einc.build(einc.load("einspace").parse("sequential(relu, relu)", (3, 8, 8)), (3, 8, 8), optimize=False)
    gm.register_parameter("stray", torch.nn.Parameter(torch.ones(2)))
    with pytest.raises(LoweringError, match='cannot emit parameter "stray": no init expression'):
        emit(gm)
