"""Bracket notation: one canonical printer, a fast parser that agrees with the Lark spec, located errors."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import einc
import einc.testing
from einc.derivation import parse
from einc.errors import ArchError, ShapeError
from einc.fmt import fmt
from einc.notation import parse_syntax, parse_syntax_lark, show
from einc.sample import Sampler
from einc.tree import Expansion, Fork, Leaf, counts

G = einc.load("einspace")
SEEDS = {p.stem: p.read_text().strip() for p in Path("examples").glob("*.arch")}
SEED_SHAPES = {"attention_head": (256, 512), "resnet_block": (64, 32, 32)}


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_seeds_are_canonical_fixed_points(name):
    shape = SEED_SHAPES.get(name, (3, 64, 64))
    arch = G.parse(SEEDS[name], shape)
    assert fmt(arch.tree) == SEEDS[name]  # the files hold the canonical form, as einc fmt lays it out
    assert parse(arch.text, G.table, arch.mode) == arch.tree


def test_sampled_trees_round_trip_and_both_parsers_agree():
    for shape in ((3, 32, 32), (1, 28, 28), (16, 32)):
        s = Sampler(G.table, shape)
        rng = random.Random(0)
        for _ in range(150):
            tree = s.sample(rng)
            text = show(tree)
            assert parse(text, G.table, "Im" if len(shape) == 3 else "Col") == tree
            assert parse_syntax(text) == parse_syntax_lark(text)
            assert show(parse(text, G.table, "Im" if len(shape) == 3 else "Col")) == text


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(einc.testing.architectures(G, input_shape=(3, 16, 16)), st.randoms(use_true_random=False))
def test_layout_does_not_matter(arch, rnd):
    """Spaces and newlines anywhere between tokens parse to the same tree."""
    text = arch.text
    spaced = "".join(c + (rnd.choice(["", " ", "\n  "]) if c in "(),[]=" else "") for c in text)
    assert parse_syntax(spaced) == parse_syntax_lark(spaced)
    assert parse(spaced, G.table) == arch.tree


def test_flat_sequential_is_right_nested():
    flat = parse("sequential(relu, norm, softmax)", G.table)
    nested = parse("sequential(relu, sequential(norm, softmax))", G.table)
    left = parse("sequential(sequential(relu, norm), softmax)", G.table)
    assert flat == nested != left
    assert show(nested) == "sequential(relu, norm, softmax)"
    assert show(left) == "sequential(sequential(relu, norm), softmax)"


def test_transparent_chains_are_recorded_in_the_tree():
    tree = parse("sequential(relu, linear(d=64))", G.table)
    m = tree.children[1]
    assert isinstance(m, Expansion) and m.head == "M" and m.label is None
    assert m.children[0].head == "C" and m.children[0].children[0] == Leaf("linear", (("d", 64),))
    assert counts(tree).nonterminals == 5 and counts(tree).terminals == 2


def test_repeated_and_independent_branches_are_distinct():
    rep = parse("branching(clone(b=4), [relu]*4, add)", G.table)
    ind = parse("branching(clone(b=2), [relu, relu], add)", G.table)
    assert rep.children[1] == Fork((rep.children[1].children[0],), True, 4)
    assert ind.children[1].repeated is False and len(ind.children[1].children) == 2
    assert show(rep) == "branching(clone(b=4), [relu]*4, add)"


BAD = [
    # (string, line, col, fragment of the message)
    ("sequential(relu", 1, 16, "unexpected end of the string"),
    ("sequential(relu,, norm)", 1, 17, 'unexpected ","'),
    ("sequential(relu norm)", 1, 17, 'unexpected "norm"'),
    ("sequential(relu, norm) x", 1, 24, 'unexpected "x"'),
    ("sequential(relu, %)", 1, 18, 'unexpected character "%"'),
    ("sequential(relu, foo)", 1, 18, '"foo" cannot stand for "M" here'),
    ("sequential(relu, linear(d=7))", 1, 18, "linear(d=7) is not a variant the grammar allows here"),
    ("sequential(relu, linear(d=64, d=64))", 1, 18, "given twice"),
    ("sequential(relu)", 1, 1, '"sequential" has 2 parts, not 1'),
    ("branching(clone(b=4), [relu, relu], add)", 1, 23, "repeats one subtree here: write [x]*4"),
    ("branching(clone(b=4), [relu]*8, add)", 1, 23, "write *4"),
    ("branching(clone(b=2), [relu]*2, add)", 1, 23, "2 independent branches"),
    ("branching(clone(b=2), [relu, relu, relu], add)", 1, 23, "3 branches after a 2-way branch"),
    ("branching(clone(b=4), [relu]*4, matmul(scaled=true))", 1, 33, '"matmul"'),
    ("routing(identity, relu, col2im)", 1, 25, '"col2im" cannot stand for "R2"'),
    ("sequential(relu,\n  norm(x=1))", 2, 3, "norm(x=1) is not a variant"),
    ("sequential(relu, sequential(norm, linear))", 1, 35, "linear is not a variant"),
]


@pytest.mark.parametrize("text,line,col,fragment", BAD)
def test_parse_errors_are_located(text, line, col, fragment):
    with pytest.raises(ArchError) as err:
        parse(text, G.table)
    e = err.value
    assert (e.line, e.col) == (line, col), str(e)
    assert fragment in str(e)
    assert str(e).splitlines()[0].startswith(f"{line}:{col}: error: ")
    assert "^" in str(e)  # the caret line


def test_errors_name_the_node_path():
    with pytest.raises(ArchError) as err:
        parse("sequential(relu, sequential(norm, foo))", G.table)
    assert err.value.path == (1, 1)
    assert "(at node /1/1)" in str(err.value)


def test_shape_errors_name_node_column_and_rule():
    arch = G.parse("branching(clone(b=2), [linear(d=16), linear(d=32)], add)")
    with pytest.raises(ShapeError) as err:
        arch.infer((3, 32, 32))
    assert "add of unequal shapes" in str(err.value)
    assert err.value.path == (2, 0) and err.value.col == 53
    with pytest.raises(ShapeError, match="larger than the padded input"):
        G.parse("routing(im2col(k=16, s=16, p=0), linear(d=16), col2im)", (3, 8, 8))


def test_col_mode_input_resolves_col_rules():
    arch = G.parse("routing(permute(o=(2, 1)), linear(d=32), permute(o=(2, 1)))", (16, 64))
    assert arch.mode == "Col" and arch.infer((16, 64)).output[0].shape == (32, 64)
    with pytest.raises(ArchError):
        G.parse("routing(permute(o=(2, 1)), linear(d=32), permute(o=(2, 1)))", (3, 16, 64))


def test_inference_counts_repeated_copies():
    one = G.parse("sequential(linear(d=16), relu)").infer((3, 8, 8))
    four = G.parse("branching(clone(b=4), [sequential(linear(d=16), relu)]*4, add)").infer((3, 8, 8))
    assert four.params == 4 * one.params
    assert four.output == one.output

