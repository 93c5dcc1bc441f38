"""The .ein language: parsing and meaning (probabilities, op variants, guards, params,
includes, comments) and fuzzing of the compiler with Hypothesis."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.lark import from_lark
from lark import Lark

from einc.ein import analyse, compile_ein, read_ein
from einc.errors import CODES, EinCheckError
from einc.grammar import EIN_LARK, EINSPACE
from einc.table import Arm, Branches, OpCall, Ref

from conftest import examples

EINSPACE_TEXT = EINSPACE.read_text(encoding="utf-8")
START = "start S(shape=(3, 32, 32))\n"


def table_of(text: str, path: str = "t.ein"):
    return compile_ein(text, path)


def probs(table, head: str, index: int = 0) -> list[float]:
    return [a.prob for a in table.rules[head][index].alternatives]


@pytest.fixture(scope="module")
def einspace():
    return compile_ein(EINSPACE_TEXT, str(EINSPACE))


# ---------------------------------------------------------------- probabilities


def test_unspecified_alternatives_share_what_is_left_uniformly() -> None:
    t = table_of(START + "S -> relu @ 0.5 | norm | identity\n")
    assert probs(t, "S") == pytest.approx([0.5, 0.25, 0.25])


def test_uniform_without_any_probability() -> None:
    t = table_of(START + "S -> relu | norm | identity | softmax\n")
    assert probs(t, "S") == pytest.approx([0.25] * 4)


def test_probability_expressions() -> None:
    t = table_of(START + "S -> relu @ (1 - 0.32) / 3 | norm @ 2 * 0.1 + -0.0 | identity\n")
    assert probs(t, "S") == pytest.approx([0.68 / 3, 0.2, 1 - 0.68 / 3 - 0.2])


def test_a_given_probability_is_split_over_the_alternatives_variants() -> None:
    # linear's two variants share its 0.4; relu and norm share the 0.6 left, 0.3 each.
    t = table_of(START + "S -> linear(d in {8, 16}) @ 0.4 | relu | norm\n")
    assert probs(t, "S") == pytest.approx([0.2, 0.2, 0.3, 0.3])


def test_variants_without_a_probability_count_as_alternatives_of_their_own() -> None:
    # 1 - 0.5 is shared by the 3 variants of clone and the 1 of identity: 1/8 each.
    t = table_of(START + "S -> relu @ 0.5 | clone(b in {2, 4, 8}) {b in {2, 4, 8}: S*} add | identity\n")
    assert probs(t, "S") == pytest.approx([0.5, 0.125, 0.125, 0.125, 0.125])


def test_einspace_probabilities(einspace) -> None:
    assert probs(einspace, "M") == pytest.approx([0.68 / 3] * 3 + [0.32])
    assert probs(einspace, "C") == pytest.approx([1 / 13] * 13)
    for rules in einspace.rules.values():
        for rule in rules:
            assert sum(a.prob for a in rule.alternatives) == pytest.approx(1, abs=1e-12)


# ---------------------------------------------------------------- op variants


def test_einspace_variant_counts(einspace) -> None:
    counts = {(h, tuple((g.param, tuple(sorted(g.values, key=str))) for g in r.guards)): len(r.alternatives)
              for h, rs in einspace.rules.items() for r in rs}
    assert counts == {
        ("S", ()): 3, ("M", ()): 4, ("C", ()): 13,                   # C: 5 ops + 8 linear widths
        ("B", (("m", ("Im",)),)): 12, ("B", (("m", ("Col",)),)): 9,  # 3 clone + 3 * 3 or 2 * 3 group-dim
        ("A", (("b", (2,)),)): 6, ("A", (("b", (4,)),)): 4, ("A", (("b", (8,)),)): 4,
        ("R1", (("m", ("Im",)),)): 13, ("R1", (("m", ("Col",)),)): 2,  # identity + 7 im2col + 5 permute
        ("R2", (("m", ("Im",)),)): 6, ("R2", (("m", ("Col",)),)): 3,
    }
    assert sum(counts.values()) == 79


def test_variants_are_the_product_of_the_variant_sets() -> None:
    t = table_of(START + "S -> group-dim(dim in {1, 2, 3}, b in {2, 4})\n")
    args = [a.body[0].args for a in t.rules["S"][0].alternatives]
    assert args == [(("b", b), ("dim", d)) for d in (1, 2, 3) for b in (2, 4)]
    ops = [a.body[0] for a in t.rules["S"][0].alternatives]
    assert all(isinstance(o, OpCall) and o.op == "group-dim" for o in ops)


def test_joint_variant_set(einspace) -> None:
    im2col = [a.body[0].args for a in einspace.rules["R1"][0].alternatives if a.body[0].op == "im2col"]
    triples = [(1, 1, 0), (1, 2, 0), (3, 1, 1), (3, 2, 1), (4, 4, 0), (8, 8, 0), (16, 16, 0)]
    assert im2col == [(("k", k), ("p", p), ("s", s)) for k, s, p in triples]


def test_fixed_and_variant_arguments_combine() -> None:
    t = table_of(START + "S -> clone(b=2) {b=2: X, X} concat(dim in {1, 2}, b=2)\nX -> relu\n")
    concats = [a.body[-1].args for a in t.rules["S"][0].alternatives]
    assert concats == [(("b", 2), ("dim", 1)), (("b", 2), ("dim", 2))]


def test_labels(einspace) -> None:
    assert [a.label for a in einspace.rules["S"][0].alternatives] == ["sequential", "branching", "routing"]
    labels = [a.label for a in einspace.rules["M"][0].alternatives]
    assert labels == ["sequential", "branching", "routing", None]
    t = table_of(START + "S -> lin: linear(d in {8, 16}) | relu\n")
    assert [a.label for a in t.rules["S"][0].alternatives] == ["lin", "lin", None]


# ---------------------------------------------------------------- guards and branch blocks


def test_guards_pick_the_rule_for_a_state(einspace) -> None:
    assert len(einspace.rule_for("B", {"m": "Col", "b": 1}).alternatives) == 9
    assert len(einspace.rule_for("B", {"m": "Im", "b": 1}).alternatives) == 12
    assert len(einspace.rule_for("A", {"m": "Im", "b": 4}).alternatives) == 4
    assert einspace.rule_for("A", {"m": "Im", "b": 3}) is None
    assert einspace.rule_for("C", {"m": None, "b": 1}) is not None  # no guard: every state


def test_guard_forms() -> None:
    t = table_of(START + "S -> X\nX(m=Im, b in {1, 2}) -> relu\nX(m=Col) -> norm\nX(m=Im, b=4) -> identity\n")
    (g1, g2) = t.rules["X"][0].guards
    assert (g1.param, g1.values, g2.param, g2.values) == ("m", {"Im"}, "b", {1, 2})
    assert t.rule_for("X", {"m": "Im", "b": 4}).alternatives[0].body[0].op == "identity"
    assert t.rule_for("X", {"m": "Im", "b": 3}) is None


def test_branch_block_arms(einspace) -> None:
    branching = einspace.rules["M"][0].alternatives[1]
    (block,) = [e for e in branching.body if isinstance(e, Branches)]
    two, many = block.arms
    assert (two.repeated, [r.name for r in two.items]) == (False, ["M", "M"])   # independent copies
    assert (many.repeated, [r.name for r in many.items]) == (True, ["M"])       # one subtree, repeated
    assert block.arm_for({"m": "Im", "b": 2}) is two
    assert block.arm_for({"m": "Im", "b": 8}) is many
    assert block.arm_for({"m": "Im", "b": 3}) is None
    assert [r.name for r in branching.refs] == ["B", "M", "M", "M", "A"]


def test_unguarded_arms_fit_by_count() -> None:
    arm2 = Arm((), (Ref("M"), Ref("M")), False)
    star = Arm((), (Ref("M"),), True)
    assert arm2.fits({"b": 2}) and not arm2.fits({"b": 4}) and star.fits({"b": 4})


# ---------------------------------------------------------------- params


LEVELS = """\
param level in {1, 2}
param wide in {true, false}
start S(shape=(3, 32, 32), level=1, wide=false)
S -> M[level=2] M
M(level=1) -> relu
M(level=2, wide=false) -> N[wide=true]
M(level=2, wide=true) -> norm
N(wide=true) -> M
"""


def test_param_declarations_and_inherited_settings() -> None:
    t = table_of(LEVELS)
    assert dict(t.params) == {"level": {1, 2}, "wide": {True, False}}
    assert t.start.params == (("level", 1), ("wide", False))
    assert t.start_env("Im") == {"m": "Im", "b": 1, "level": 1, "wide": False}
    first, second = t.rules["S"][0].alternatives[0].body
    assert (first.name, first.sets, second.sets) == ("M", (("level", 2),), ())


def test_inherited_parameters_hold_for_the_subtree_only() -> None:
    # S's first M runs with level=2 and reaches N[wide=true], then M(level=2, wide=true); the
    # second M runs with S's own level=1. Every rule is reached: no unreachable warning.
    table, diags, report = analyse(LEVELS, "t.ein")
    assert diags == [] and report is not None
    assert report.expansions == pytest.approx({"S": 1, "M": 3, "N": 1})


def test_setting_an_undeclared_or_unknown_value_is_an_error() -> None:
    with pytest.raises(EinCheckError, match="only declared params can be set"):
        compile_ein(START + "S -> X[level=1]\nX -> relu\n")
    with pytest.raises(EinCheckError, match="level never takes the value 3"):
        compile_ein("param level in {1, 2}\nstart S(shape=(3, 8, 8), level=1)\nS -> X[level=3]\nX -> relu\n")


def test_start_must_set_every_declared_parameter() -> None:
    with pytest.raises(EinCheckError, match='start gives no value to parameter "level"'):
        compile_ein("param level in {1, 2}\nstart S(shape=(3, 8, 8))\nS -> relu\n")


def test_booleans_are_not_integers() -> None:
    with pytest.raises(EinCheckError, match="f never takes the value true"):
        compile_ein("param f in {0, 1}\nstart S(shape=(3, 8, 8), f=0)\nS(f=true) -> relu\nS(f=0) -> norm\n")


def test_start_mode_and_shape() -> None:
    assert table_of("start S(m=Col)\nS -> relu\n").start.mode == "Col"
    t = table_of("start Net(shape=(16, 8))\nNet -> relu\n")
    assert (t.start.symbol, t.start.shape, t.start.mode) == ("Net", (16, 8), "Col")


# ---------------------------------------------------------------- include


def test_include_is_relative_to_the_including_file(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "ops.ein").write_text("C -> relu | norm\n")
    (tmp_path / "lib" / "more.ein").write_text('include "ops.ein"\nD -> C C\n')  # relative to lib/
    main = tmp_path / "main.ein"
    main.write_text(START + 'include "lib/more.ein"\nS -> D\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    t = compile_ein(main.read_text(), str(main))
    assert set(t.rules) == {"S", "C", "D"}
    assert Path(t.rules["C"][0].span.path) == (tmp_path / "lib" / "ops.ein").resolve()


def test_include_cycle_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "a.ein").write_text(START + 'include "b.ein"\nS -> X\n')
    (tmp_path / "b.ein").write_text('include "c.ein"\nX -> relu\n')
    (tmp_path / "c.ein").write_text('include "a.ein"\n')
    with pytest.raises(EinCheckError) as info:
        compile_ein((tmp_path / "a.ein").read_text(), str(tmp_path / "a.ein"))
    (d,) = info.value.diagnostics
    assert d.code == "include" and Path(d.span.path).name == "c.ein" and (d.span.line, d.span.col) == (1, 1)
    assert "a.ein -> b.ein -> c.ein -> a.ein" in d.message


def test_include_cycle_through_a_relative_top_path(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "self.ein").write_text(START + 'include "self.ein"\nS -> relu\n')
    monkeypatch.chdir(tmp_path)
    _, diags, _ = analyse((tmp_path / "self.ein").read_text(), "self.ein")
    assert [(d.code, d.span.path, d.span.line) for d in diags] == [("include", "self.ein", 2)]


def test_include_of_something_that_is_not_a_text_file(tmp_path: Path) -> None:
    (tmp_path / "blob.bin").write_bytes(b"\xff\xfe\x00")
    text = START + 'include "blob.bin"\ninclude "/dev/null"\ninclude "a\x00b"\nS -> relu\n'
    _, diags, _ = analyse(text, str(tmp_path / "m.ein"))
    assert [(d.code, d.span.line) for d in diags] == [("include", 2), ("include", 3), ("include", 4)]


def test_include_an_included_files_start_and_params(tmp_path: Path) -> None:
    (tmp_path / "head.ein").write_text("param level in {1, 2}\nstart S(shape=(3, 8, 8), level=2)\n")
    t = compile_ein('include "head.ein"\nS(level=2) -> relu\n', str(tmp_path / "m.ein"))
    assert t.start.params == (("level", 2),)


# ---------------------------------------------------------------- comments and safety


def test_comments_anywhere() -> None:
    plain = START + "S -> relu | norm\n   | identity @ 0.5\nX -> S\n"
    commented = """# a file comment
start S(shape=(3, 32, 32))   # the input

# between items
S -> relu   # after an alternative
   # on a line of its own between alternatives
   | norm # tight
# at column 1 between alternatives
   | identity @ 0.5 # after a probability
X -> S# no space
# the end, without a final newline"""

    def shape(t):
        return {h: [[(a.label, a.prob, [e.op if isinstance(e, OpCall) else e.name for e in a.body])
                     for a in r.alternatives] for r in rs] for h, rs in t.rules.items()}

    assert shape(read_ein(plain)[0]) == shape(read_ein(commented)[0])
    assert [d.code for d in analyse(commented)[1]] == ["unreachable"]  # X; nothing else


def test_blank_lines_and_crlf() -> None:
    t = table_of("\r\n\r\n" + START.replace("\n", "\r\n") + "S -> relu\r\n\r\n   | norm\r\n\r\n")
    assert len(t.rules["S"][0].alternatives) == 2


def test_a_grammar_never_runs_code(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.py"
    evil.write_text(f"open({str(marker)!r}, 'w').write('x')\nOPS = []\n")
    texts = [
        START + f'include "{evil}"\nS -> relu\n',                     # read as .ein text, never imported
        START + "S -> relu @ __import__('os').system('true')\n",      # probabilities are not eval'd
        START + "S -> os.system\n",
        START + "S -> relu @ 1e999999\n",
    ]
    for text in texts:
        _, diags, _ = analyse(text, str(tmp_path / "g.ein"))
        assert any(d.severity == "error" for d in diags)
    assert not marker.exists()


def test_compile_memoises_one_table_per_text() -> None:
    text = START + "S -> relu\n"
    assert compile_ein(text, "a.ein") is compile_ein(text, "a.ein")


# ---------------------------------------------------------------- fuzzing


def assert_diagnoses(text: str) -> None:
    """analyse never raises; compile_ein raises only EinCheckError, exactly when there are errors."""
    table, diags, report = analyse(text, "fuzz.ein")
    for d in diags:
        assert d.code in CODES and d.span is not None and d.span.line >= 1 and d.span.col >= 1
        d.render()
    errors = [d for d in diags if d.severity == "error"]
    if table is None:
        assert errors
    try:
        compiled = compile_ein(text, "fuzz.ein")
    except EinCheckError as e:
        assert errors and e.errors
    else:
        assert not errors and compiled.start.symbol in compiled.rules


_LARK = Lark(EIN_LARK.read_text(encoding="utf-8"), parser="lalr")
_spaced = lambda *words: st.sampled_from(words).map(lambda w: f" {w} ")  # noqa: E731
# Terminals are drawn from small vocabularies and padded with spaces: adjacent names would
# otherwise fuse ("param" "x" -> "paramx") and almost every text would be one syntax error.
# COMMENT is ignored by the lexer and would swallow the rest of its line, so it is drawn
# empty; comments still come through _NL and _OR. STRING never names a real file.
_EXPLICIT = {
    "_NL": st.sampled_from(["\n", "\n\n", "\n  # note\n", "\r\n", "\n# | -> {\n"]),
    "_OR": st.sampled_from(["|", " | ", "\n   | ", "\n# c\n   |"]),
    "COMMENT": st.just(""),
    # the anonymous terminal of %ignore /[\t ]+/
    **{name: st.sampled_from([" ", "\t"]) for name in _LARK.ignore_tokens if name != "COMMENT"},
    "_INCLUDE": st.just("include "), "_PARAM": st.just("param "), "_START": st.just("start "),
    "_IN": st.just(" in "), "_TRUE": st.just(" true "), "_FALSE": st.just(" false "),
    "STRING": st.sampled_from(['"no-such-file.ein"', '""', '"."', '"a\x00b"']),
    "UPPER": _spaced("S", "M", "B", "A", "C", "R1", "Im", "Col", "X"),
    "LOWER": _spaced("relu", "norm", "linear", "clone", "group-dim", "add", "concat", "matmul", "im2col",
                     "col2im", "permute", "identity", "softmax", "pos-enc", "d", "b", "m", "k", "s", "p",
                     "o", "dim", "scaled", "shape", "level", "conv"),
    "NUMBER": _spaced("0", "1", "2", "3", "4", "8", "32", "0.5", "0.32", "1e9", "1e400", ".5"),
}


@pytest.mark.slow  # 500 fuzzed grammar texts
@settings(max_examples=examples(2000), deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                 HealthCheck.data_too_large])
@given(from_lark(_LARK, explicit=_EXPLICIT))
def test_fuzz_texts_of_the_ein_syntax(text: str) -> None:
    assert_diagnoses(text)


_TOKENS = re.findall(r"\s+|[A-Za-z_][A-Za-z0-9_-]*|\d+\.?\d*|->|.", EINSPACE_TEXT)
assert "".join(_TOKENS) == EINSPACE_TEXT
_VOCAB = sorted(set(_TOKENS) | {"\n", "|", "{", "}", "(", ")", "[", "]", "@", "*", ":", ",", "0", "-1", "99"})


@st.composite
def mutated_einspace(draw) -> str:
    """einspace.ein with 1-4 random deletions, insertions or swaps of tokens or characters."""
    by_char = draw(st.booleans())
    units = list(EINSPACE_TEXT) if by_char else list(_TOKENS)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["delete", "insert", "swap"]))
        i = draw(st.integers(0, len(units) - 1))
        if kind == "delete":
            del units[i]
        elif kind == "insert":
            units.insert(i, draw(st.sampled_from(_VOCAB)) if not by_char
                         else draw(st.sampled_from(sorted(set(EINSPACE_TEXT)))))
        else:
            j = draw(st.integers(0, len(units) - 1))
            units[i], units[j] = units[j], units[i]
    return "".join(units)


@settings(max_examples=examples(400), deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(mutated_einspace())
def test_fuzz_mutated_einspace(text: str) -> None:
    assert_diagnoses(text)


def test_a_file_included_twice_through_a_diamond_is_read_once(tmp_path):
    (tmp_path / "d.ein").write_text("X -> relu\n")
    (tmp_path / "b.ein").write_text('include "d.ein"\n')
    (tmp_path / "c.ein").write_text('include "d.ein"\n')
    top = tmp_path / "a.ein"
    top.write_text('include "b.ein"\ninclude "c.ein"\nstart S(shape=(4, 4))\nS -> X\n')
    table, diags, _ = analyse(top.read_text(), str(top))
    assert [d for d in diags if d.severity == "error"] == []
    assert len(table.rules["X"]) == 1
