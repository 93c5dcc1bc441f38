"""For every grammar in the repository and in the test fixtures, every sampled tree prints to a
string that parses back to the same tree (issue 9): what ``einc check`` passes can be searched."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

import einc
import einc.testing
from einc.derivation import parse
from einc.ein import analyse
from einc.errors import InputError
from einc.notation import parse_syntax, parse_syntax_lark, show
from einc.ops import feature_for
from einc.plugins import load_plugin
from einc.sample import Budget, Sampler

ROOT = Path(__file__).resolve().parent.parent
BUDGETS = (Budget(max_params=500_000, max_flops=20_000_000, max_nodes=120, max_depth=30), Budget(max_nodes=600))


def grammars() -> list[Path]:
    """Every .ein file that compiles: bundled, examples, fixtures (with their plugin, if any)."""
    files = sorted(ROOT.glob("grammar/**/*.ein")) + sorted(ROOT.glob("examples/**/*.ein")) + sorted(
        (ROOT / "tests" / "data").glob("**/*.ein"))
    out = []
    for f in files:
        _, diags, _ = analyse(f.read_text(encoding="utf-8"), str(f), _library(f))
        if not any(d.severity == "error" for d in diags):
            out.append(f)
    return out


def _library(path: Path):
    from einc.ops import BUILTIN

    plugin = path.with_suffix(".py")
    return BUILTIN.extend(load_plugin(str(plugin))) if plugin.is_file() else BUILTIN


GRAMMARS = grammars()


def test_the_repository_has_grammars_of_both_modes_and_all_fixture_kinds():
    names = {p.stem for p in GRAMMARS}
    assert {"einspace", "mlp_col", "conv_residual", "hierarchical"} <= names
    assert len(GRAMMARS) >= 6
    assert einc.load("einspace").check_input((16, 32)) == (16, 32)


@pytest.mark.parametrize("path", GRAMMARS, ids=[p.stem for p in GRAMMARS])
def test_sampled_trees_print_and_parse_back(path: Path):
    g = einc.load(path, _library(path))
    other = (16, 32) if len(g.default_shape()) == 3 else (3, 16, 16)
    try:
        shapes = [g.default_shape(), g.check_input(other)]  # einspace, say, takes both modes
    except InputError:
        shapes = [g.default_shape()]
    for shape, budget in itertools.product(shapes, BUDGETS):
        mode = feature_for(shape).mode
        sampler = Sampler(g.table, shape, budget)
        rng = random.Random(path.stem)
        for _ in range(25):
            tree = sampler.sample(rng)
            text = show(tree)
            assert parse(text, g.table, mode) == tree, text
            assert show(parse(text, g.table, mode)) == text
            assert parse_syntax(text) == parse_syntax_lark(text)


SPACES = [p for p in GRAMMARS if p.parent.name in ("good", "grammar")]


@pytest.mark.parametrize("path", SPACES, ids=[p.stem for p in SPACES])
def test_hypothesis_drawn_architectures_round_trip(path: Path):
    g = einc.load(path)

    @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(einc.testing.architectures(g))
    def round_trip(arch):
        assert g.parse(arch.text, g.default_shape()) == arch

    round_trip()


def test_the_issue_example_an_unlabelled_conv_is_written_by_its_lowercase_name():
    g = einc.compile_grammar("start S(shape=(3, 8, 8))\nS -> sequential: Conv Conv\n"
                             "Conv -> im2col(k=3, s=1, p=1) linear(d=16) col2im\n")
    arch = g.sample()
    conv = "conv(im2col(k=3, s=1, p=1), linear(d=16), col2im)"
    assert arch.text == f"sequential({conv}, {conv})"
    assert g.parse(arch.text, (3, 8, 8)) == arch


def test_an_unlabelled_branch_block_gets_a_label_too():
    g = einc.compile_grammar("start S(shape=(3, 8, 8))\nS -> branching: clone(b=2) X add\n"
                             "X -> {b=2: M, M}\nM -> relu | norm\n")
    arch = g.parse("branching(clone(b=2), x([relu, norm]), add)")
    assert arch.text == "branching(clone(b=2), x([relu, norm]), add)"
    for seed in range(5):
        a = g.sample(seed=seed)
        assert g.parse(a.text) == a


def test_alternatives_differing_only_in_arguments_may_share_a_label():
    """einc fit writes a variant set as one alternative per variant: strings tell them apart."""
    g = einc.compile_grammar("start S(shape=(3, 8, 8))\n"
                             "S -> conv: im2col(k=3, s=1, p=1) linear(d=8) col2im @ 0.7\n"
                             "   | conv: im2col(k=3, s=1, p=1) linear(d=16) col2im @ 0.3\n")
    texts = {g.sample(seed=seed).text for seed in range(12)}
    assert texts == {f"conv(im2col(k=3, s=1, p=1), linear(d={d}), col2im)" for d in (8, 16)}
    assert all(g.parse(t).text == t for t in texts)
