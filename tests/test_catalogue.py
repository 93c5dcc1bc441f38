"""Bad input of every kind gives one located EinError (issue 9): a catalogue of malformed
architecture strings (tests/data/arch/einspace_bad.txt, the expected error written beside each
case), the Python API's bad arguments, input modes the grammar cannot take, and depth."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

import einc
import einc.testing
from einc.derivation import parse
from einc.errors import ArchError, EinCheckError, EinError, InputError
from einc.mutate import node_states
from einc.notation import show
from einc.sample import Budget, Sampler, SamplingError
from einc.tree import counts

DATA = Path(__file__).resolve().parent / "data"
CATALOGUE = DATA / "arch" / "einspace_bad.txt"
EXPECT = re.compile(r"^(?P<case>.*?)   # E: (?P<line>\d+):(?P<col>\d+) (?P<code>[a-z-]+): (?P<message>.*)$")
G = einc.load("einspace")
COL = """\
start S(shape=(16, 64))
S -> sequential: M M
M(m=Col) -> linear(d in {16, 32}) | relu
"""


def cases() -> list[tuple[str, dict]]:
    out = []
    for line in CATALOGUE.read_text(encoding="utf-8").splitlines():
        if line.startswith("#") or not line.strip():
            continue
        m = EXPECT.match(line)
        assert m, f"not a catalogue line: {line!r}"
        out.append((m["case"], m.groupdict()))
    return out


@pytest.mark.parametrize("case, expect", cases(), ids=[c for c, _ in cases()])
def test_each_malformed_string_gives_its_located_error(case, expect):
    text = case.encode().decode("unicode_escape")  # "\n", "\x00", "\u00a0" in the file
    with pytest.raises(ArchError) as info:
        G.parse(text, (3, 8, 8))
    e = info.value
    assert (e.line, e.col, e.code) == (int(expect["line"]), int(expect["col"]), expect["code"])
    assert e.reason.startswith(expect["message"]), e.reason
    first = str(e).splitlines()[0]
    assert first.startswith(f"{e.line}:{e.col}: error: ")
    assert all(c.isprintable() for c in str(e).replace("\n", "")), "no invisible characters in a message"


def test_the_catalogue_covers_every_architecture_code():
    assert {e["code"] for _, e in cases()} == {"arch-syntax", "arch-derivation", "shape"}


# ---------------------------------------------------------------- the Python API


@pytest.mark.parametrize("shape", [(0, 32, 32), (1, 3, 32, 32), (32,), (3, -1, 4), "3,32,32", 7, (3.0, 8, 8),
                                   (True, 8, 8)])
def test_bad_input_shapes_raise_input_errors_everywhere(shape):
    arch = G.parse("sequential(relu, norm)")
    for call in (lambda: G.parse("sequential(relu, norm)", shape), lambda: arch.infer(shape),
                 lambda: Sampler(G.table, shape), lambda: G.check_input(shape), lambda: G.sample(shape),
                 lambda: einc.build(arch, shape)):
        with pytest.raises(InputError, match=r"C,H,W \(Im mode\) or S,D \(Col mode\)"):
            call()


def test_numpy_style_integer_sizes_are_accepted():
    import numpy as np

    assert G.check_input((np.int64(3), np.int64(8), np.int64(8))) == (3, 8, 8)


def test_a_grammar_for_col_features_names_an_im_input_at_once():
    g = einc.compile_grammar(COL, "mlp.ein")
    msg = "mlp.ein:1:1: error: the grammar starts in mode Col; the input 3,8,8 is Im: "
    for call in (lambda: g.check_input((3, 8, 8)), lambda: Sampler(g.table, (3, 8, 8)),
                 lambda: g.parse("sequential(relu, relu)", (3, 8, 8)), lambda: g.sample((3, 8, 8)),
                 lambda: einc.testing.architectures(g, (3, 8, 8))):
        with pytest.raises(InputError) as info:
            call()
        assert str(info.value).startswith(msg) and str(info.value).endswith("give a S,D input  [input]")
    assert g.check_input((8, 16)) == (8, 16)


def test_an_unguarded_grammar_does_not_run_silently_in_the_other_mode():
    g = einc.compile_grammar("start S(shape=(16, 64))\nS -> sequential: linear(d=8) relu\n", "mlp.ein")
    with pytest.raises(InputError, match="no rule of the grammar is written for m=Im"):
        Sampler(g.table, (1, 8, 8))


def test_a_grammar_with_rules_for_both_modes_takes_both():
    assert G.check_input((16, 32)) == (16, 32)
    assert Sampler(G.table, (16, 32)).sample(random.Random(0)).head == "S"
    guarded = einc.compile_grammar("start S(shape=(3, 8, 8))\nS -> M\nM(m=Im) -> relu\nM(m=Col) -> X\n"
                                   "X(m=Im) -> norm\n", "g.ein")
    with pytest.raises(InputError, match='no rule of "X" applies with m=Col, b=1'):
        guarded.check_input((8, 8))


def test_api_calls_on_wrong_types_raise_ein_errors():
    tree = Sampler(G.table, (3, 16, 16)).sample(random.Random(0))
    with pytest.raises(EinError, match=r"wrap a sampled tree as grammar.architecture\(tree\)"):
        einc.build(tree, (3, 16, 16))
    with pytest.raises(EinError, match="bracket-notation string, not NoneType"):
        G.parse(None)  # type: ignore[arg-type]
    with pytest.raises(EinError, match="not str"):
        G.architecture("relu")  # type: ignore[arg-type]
    with pytest.raises(EinError, match="max_depth is 1 to"):
        Budget(max_depth=10**9)


def test_submodules_are_reachable_after_a_plain_import():
    import subprocess
    import sys

    code = ("import einc, sys; assert 'torch' not in sys.modules; "
            "print(einc.sample.Sampler.__name__, einc.mutate.crossover.__name__, einc.emit.emit.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["Sampler", "crossover", "emit"]
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        einc.nothing_here  # noqa: B018


def test_a_sampled_architecture_builds_and_prints():
    arch = G.sample((3, 16, 16), seed=3, budget=Budget(max_params=100_000, max_nodes=40))
    assert isinstance(arch, einc.Architecture) and str(arch) == show(arch.tree) == arch.text
    assert G.parse(str(arch), (3, 16, 16)) == arch
    model = einc.build(arch, (3, 16, 16), num_classes=4)
    import torch

    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 4)


def test_hypothesis_strategy_says_when_nothing_fits_its_budget():
    g = einc.compile_grammar("start S(shape=(3, 32, 32))\nS -> seq: linear(d=4096) linear(d=4096)\n")
    with pytest.raises(EinError, match=r"within einc.testing.SMALL .* pass budget=einc.Budget"):
        einc.testing.architectures(g)
    assert einc.testing.architectures(g, budget=Budget()) is not None


# ---------------------------------------------------------------- text encodings


def test_a_byte_order_mark_is_accepted_in_grammars_and_architectures(tmp_path):
    path = tmp_path / "bom.ein"
    path.write_bytes(b"\xef\xbb\xbfstart S(shape=(3, 8, 8))\nS -> seq: relu norm\n")
    g = einc.load(path)
    assert g.parse("\ufeffseq(relu, norm)").text == "seq(relu, norm)"


# ---------------------------------------------------------------- depth


def test_strings_far_past_the_recursion_limit_parse_and_print():
    flat = "sequential(" + ", ".join(["relu"] * 3000) + ")"
    tree = parse(flat, G.table)
    assert counts(tree).depth > 3000 and show(tree) == flat
    nested = "sequential(relu, " * 1500 + "relu" + ")" * 1500
    assert show(parse(nested, G.table)) == flat[: len("sequential(")] + ", ".join(["relu"] * 1501) + ")"
    assert hash(parse(flat, G.table)) == hash(parse(show(tree), G.table))


def test_whatever_a_deep_budget_samples_prints_parses_and_mutates():
    g = einc.compile_grammar("start S(shape=(2, 4))\nS -> chain: relu M\n"
                             "M -> chain: relu M @ 0.999999 | identity @ 0.000001\n")
    sampler = Sampler(g.table, (2, 4), Budget(max_nodes=100_000, max_depth=2_500))
    tree = sampler.sample(random.Random(0))
    assert counts(tree).depth > 2000
    assert parse(show(tree), g.table) == tree
    assert len(node_states(tree, g.table, (2, 4))) == counts(tree).nonterminals
    assert g.architecture(tree).infer((2, 4)).output[0].shape == (2, 4)  # shapes too, at any depth


def test_a_string_nested_past_the_limit_gets_a_located_error():
    from einc.notation import MAX_NESTING

    text = "[" * (MAX_NESTING + 5)
    with pytest.raises(ArchError, match=f"less than {MAX_NESTING} levels of nesting") as info:
        parse(text, G.table)
    assert info.value.col == MAX_NESTING + 2


def test_600_nested_includes_load(tmp_path):
    for i in range(600):
        (tmp_path / f"f{i}.ein").write_text(f'include "f{i + 1}.ein"\n')
    (tmp_path / "f600.ein").write_text("start S(shape=(3, 8, 8))\nS -> relu\n")
    assert einc.load(tmp_path / "f0.ein").table.start.symbol == "S"
    (tmp_path / "f600.ein").write_text('start S(shape=(3, 8, 8))\nS -> relu\ninclude "f0.ein"\n')
    with pytest.raises(EinCheckError, match=r'"f0.ein" includes itself \(through f0.ein -> f1.ein'):
        einc.load(tmp_path / "f0.ein")


def test_parentheses_nested_thousands_deep_in_a_probability_compile():
    text = "start S(shape=(3, 8, 8))\nS -> relu @ " + "(" * 30000 + "1" + ")" * 30000 + "\n"
    assert einc.compile_grammar(text, "g.ein").table.rules["S"][0].alternatives[0].prob == 1


def test_sampling_errors_are_ein_errors():
    assert issubclass(SamplingError, EinError)
