"""Every check of the .ein compiler, one fixture each, plus message texts and ``einc check``.

A fixture in tests/data/ein/bad/ states what it must produce on the offending line:
``# E: LINE:COL code`` for an error, ``# W: LINE:COL code`` for a warning (several per line
allowed). Files it includes from bad/inc/ carry their own expectations the same way. The test
below compares the set of (file, line, col, code, severity) reported by ``einc.ein.analyse``
with the set written in the files: nothing missing, nothing extra.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from einc.ein import analyse, compile_ein
from einc.errors import CODES, Diagnostic, EinCheckError, Span

ROOT = Path(__file__).resolve().parent.parent
BAD = Path(__file__).resolve().parent / "data" / "ein" / "bad"
EINSPACE = ROOT / "grammar" / "einspace.ein"
FIXTURES = sorted(BAD.glob("*.ein"))
EXPECT = re.compile(r"\b([EW]): (\d+):(\d+) ([a-z][a-z-]*)")
INCLUDE = re.compile(r'^\s*include\s+"([^"]+)"', re.M)
# Codes only the architecture parser and shape inference emit, never the .ein compiler.
NOT_EIN = {"arch-syntax", "arch-derivation", "shape", "input"}


def expectations(path: Path, seen: set[Path] | None = None) -> set[tuple]:
    """(file, line, col, code, severity) written in ``path`` and the files it includes."""
    seen = set() if seen is None else seen
    path = path.resolve()
    if path in seen or not path.is_file():
        return set()
    seen.add(path)
    text = path.read_text(encoding="utf-8")
    out = set()
    for number, line in enumerate(text.splitlines(), 1):
        for kind, lineno, col, code in EXPECT.findall(line):
            assert int(lineno) == number, f"{path.name}:{number}: expectation names line {lineno}"
            out.add((path, int(lineno), int(col), code, "error" if kind == "E" else "warning"))
    for target in INCLUDE.findall(text):
        out |= expectations(path.parent / target, seen)
    return out


def reported(path: Path) -> set[tuple]:
    _, diags, _ = analyse(path.read_text(encoding="utf-8"), str(path))
    return {(Path(d.span.path).resolve(), d.span.line, d.span.col, d.code, d.severity) for d in diags}


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_fixture_reports_exactly_its_expectations(path: Path) -> None:
    expected = expectations(path)
    assert expected, f"{path.name} states no expectation"
    got = reported(path)
    assert got == expected, (f"\nmissing: {sorted(expected - got)}\nunexpected: {sorted(got - expected)}")


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_compile_raises_exactly_when_a_fixture_has_errors(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    errors = {e for e in expectations(path) if e[4] == "error"}
    if errors:
        with pytest.raises(EinCheckError) as info:
            compile_ein(text, str(path))
        assert {(Path(d.span.path).resolve(), d.span.line, d.span.col, d.code, d.severity)
                for d in info.value.diagnostics} == errors
        assert all(d.severity == "error" for d in info.value.errors)
    else:
        assert compile_ein(text, str(path)).start.symbol == "S"


def test_every_compiler_code_has_a_fixture() -> None:
    covered = {e[3] for p in FIXTURES for e in expectations(p)}
    assert covered == set(CODES) - NOT_EIN


def test_one_run_reports_several_different_errors() -> None:
    codes = [e[3] for e in expectations(BAD / "many_errors.ein")]
    assert len(set(codes)) >= 5
    assert {e[3] for e in reported(BAD / "many_errors.ein")} == set(codes)


def test_einspace_has_no_diagnostics() -> None:
    table, diags, report = analyse(EINSPACE.read_text(encoding="utf-8"), str(EINSPACE))
    assert diags == [] and table is not None and report is not None


# ---------------------------------------------------------------- message texts


def messages(text: str, path: str = "m.ein") -> list[str]:
    return [d.message for d in analyse(text, path)[1]]


START = "start S(shape=(3, 32, 32))\n"


def test_undefined_nonterminal_suggests_the_close_name() -> None:
    assert messages(START + "S -> Blok\nBlock -> relu\n") == [
        'undefined nonterminal "Blok"; did you mean "Block"?']
    assert messages(START + "S -> Zzz\n") == ['undefined nonterminal "Zzz"']


def test_unknown_operation_suggests_the_close_name() -> None:
    assert messages(START + "S -> rleu\n") == ['unknown operation "rleu"; did you mean "relu"?']


def test_probability_messages() -> None:
    assert messages(START + "S -> relu @ 0.3 | norm @ 0.3\n") == ['probabilities of "S" sum to 0.6, not 1']
    assert messages(START + "S -> relu @ 1 | norm\n") == [
        'probabilities of "S" sum to 1, leaving nothing for 1 alternative(s) without one']
    assert "probability 1.5 is outside [0, 1]" in messages(START + "S -> relu @ 1.5\n")
    guarded = START + "S(m=Im) -> relu @ 0.5\nS(m=Col) -> relu\n"
    assert messages(guarded) == ['probabilities of "S(m=Im)" sum to 0.5, not 1']


def test_hyperparameter_messages() -> None:
    assert messages(START + "S -> linear\n") == [
        'operation "linear" needs hyperparameter "d" (a positive integer)']
    assert messages(START + "S -> relu(d=3)\n") == [
        'operation "relu" has no hyperparameter "d"; it takes none']
    assert messages(START + "S -> linear(d=0)\n") == ['"linear" hyperparameter d=0 is not a positive integer']


def test_guard_and_start_messages() -> None:
    assert messages(START + "S(m=Img) -> relu\n") == ["m never takes the value Img"]
    assert messages("S -> relu\n") == ['no start declaration; add e.g. "start S(shape=(3, 32, 32))"']
    assert messages("start S\nS -> relu\n") == ["start needs a shape or m=Im / m=Col"]


def test_duplicate_rule_message_names_the_shared_state() -> None:
    text = START + "S -> M\nM(m=Im) -> relu\nM(b in {1, 2}) -> norm\n"
    assert messages(text) == ['a second rule for "M" that also applies when m=Im, b=1; first at line 3']


def test_semantic_messages() -> None:
    coverage = START + "S -> im2col(k=4, s=4, p=0) C\nC(m=Im) -> relu\n"
    assert messages(coverage) == ['"C" is reachable with m=Col, b=1 but no rule of it applies there']
    assert messages(START + "S -> relu\nU -> relu\n") == ['nonterminal "U" is unreachable from "S"']
    assert messages(START + "S -> relu | Loop\nLoop -> Loop relu\n") == ['"Loop" can derive no finite tree']
    (msg,) = messages(START + "S -> M\nM -> M M @ 0.6 | relu @ 0.4\n")
    assert msg.startswith("the grammar is not consistent: spectral radius 1.2000 >= 1")
    assert "above 0.5" in msg


def test_include_messages(tmp_path: Path) -> None:
    (tmp_path / "a.ein").write_text('include "b.ein"\n' + START + "S -> relu\n")
    (tmp_path / "b.ein").write_text('include "a.ein"\n')
    _, diags, _ = analyse((tmp_path / "a.ein").read_text(), str(tmp_path / "a.ein"))
    assert [(Path(d.span.path).name, d.message) for d in diags] == [
        ("b.ein", '"a.ein" includes itself (through a.ein -> b.ein -> a.ein)')]
    assert messages(START + 'include "missing.ein"\nS -> relu\n', str(tmp_path / "m.ein")) == [
        f'cannot read "{tmp_path / "missing.ein"}": No such file or directory']


def test_syntax_messages() -> None:
    assert messages(START + "S -> relu @ 0.5.\n") == ['unexpected character "."']
    assert messages(START + "S -> linear(d=1.5)\n") == ["expected an integer, not 1.5"]
    (msg,) = messages(START + "S -> -> relu\n")
    assert msg.startswith('unexpected "->"; expected one of')
    (msg,) = messages(START + "S -> relu |\n")
    assert msg.startswith("unexpected new line; expected one of")
    (msg,) = messages(START + "S -> relu |")
    assert msg.startswith("unexpected end of file; expected one of")


def test_a_non_integer_branching_factor_is_a_guard_error_not_a_crash() -> None:
    arm = START + "S -> clone(b=2) {b in {S, 2}: M, M} add\nM -> relu\n"
    assert messages(arm) == ["b never takes the value S"]
    rule = START + "S(b=1) -> relu\nS(b in {S, 4}) -> norm\n"
    assert messages(rule) == ["b never takes the value S"]


def test_render_format_and_caret() -> None:
    _, diags, _ = analyse(START + "S -> Blok\nBlock -> relu\n", "g.ein")
    assert diags[0].render() == (
        'g.ein:2:6: error: undefined nonterminal "Blok"; did you mean "Block"?  [undefined-symbol]\n'
        "    S -> Blok\n"
        "         ^~~~")
    assert diags[0].render(context=False).count("\n") == 0
    warning = Diagnostic(Span("g.ein", 3, 1), "warning", "unreachable", "x")
    assert warning.render() == "g.ein:3:1: warning: x  [unreachable]"


def test_check_error_sorts_and_joins_every_diagnostic() -> None:
    with pytest.raises(EinCheckError) as info:
        compile_ein((BAD / "many_errors.ein").read_text(), "many.ein")
    lines = [d.span.line for d in info.value.diagnostics]
    assert lines == sorted(lines) and len(lines) == len(info.value.errors) >= 5
    assert str(info.value).splitlines()[0].startswith("many.ein:3:1: error: ")


# ---------------------------------------------------------------- einc check


def einc(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "einc.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=60, check=False)


DIAG_LINE = re.compile(r"^(?P<path>[^:]+):(?P<line>\d+):(?P<col>\d+): (?P<sev>error|warning): "
                       r".+  \[(?P<code>[a-z-]+)\]$")


def test_cli_check_bad_file_exits_1_with_located_errors() -> None:
    rel = str((BAD / "many_errors.ein").relative_to(ROOT))
    res = einc("check", rel)
    assert res.returncode == 1
    assert "Traceback" not in res.stderr + res.stdout
    located = [m for m in map(DIAG_LINE.match, res.stderr.splitlines()) if m]
    assert {(int(m["line"]), int(m["col"]), m["code"]) for m in located} == {
        (e[1], e[2], e[3]) for e in expectations(BAD / "many_errors.ein")}
    assert all(m["path"] == rel and m["sev"] == "error" for m in located)
    assert res.stderr.rstrip().endswith(f"{rel}: {len(located)} error(s)")


def test_cli_check_einspace_exits_0_with_its_report() -> None:
    res = einc("check", "grammar/einspace.ein")
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""
    assert "spectral radius rho = 0.9822: consistent (< 1)" in res.stdout
    assert "M: now 0.3200; consistent above 0.3077; finite expected network size above 0.6087" in res.stdout
    assert "79 alternatives" in res.stdout


def test_cli_check_warning_only_exits_0() -> None:
    res = einc("check", str(BAD / "unreachable.ein"))
    assert res.returncode == 0
    assert "warning:" in res.stderr and "[unreachable]" in res.stderr
    assert "spectral radius rho" in res.stdout


def test_cli_usage_errors_exit_2() -> None:
    for args in (("check",), ("check", "grammar/einspace.ein", "--no-such-option"), ("no-such-command",)):
        res = einc(*args)
        assert res.returncode == 2, args
        assert "Traceback" not in res.stderr and "Usage:" in res.stderr


def test_cli_unreadable_file_exits_1_without_traceback(tmp_path: Path) -> None:
    res = einc("check", str(tmp_path / "absent.ein"))
    assert res.returncode == 1
    assert "Traceback" not in res.stderr
    assert res.stderr.startswith(f"{tmp_path / 'absent.ein'}:1:1: error: cannot read")


def test_cli_json() -> None:
    good = json.loads(einc("check", "grammar/einspace.ein", "--json").stdout)
    assert good["ok"] is True and good["consistent"] is True and good["diagnostics"] == []
    assert good["spectral_radius"] == pytest.approx(13 * 0.68 / 9, abs=1e-9)
    assert good["expected_network_operations"] == "infinite"
    assert good["critical_probabilities"]["M"]["consistency"] == pytest.approx(4 / 13, abs=1e-6)
    assert good["alternatives"] == 79 and good["nonterminals"] == 7 and good["rules"] == 12

    res = einc("check", str(BAD / "many_errors.ein"), "--json")
    assert res.returncode == 1
    bad = json.loads(res.stdout)
    assert bad["ok"] is False and "spectral_radius" not in bad
    assert {(d["line"], d["col"], d["code"]) for d in bad["diagnostics"]} == {
        (e[1], e[2], e[3]) for e in expectations(BAD / "many_errors.ein")}
    assert all(set(d) == {"line", "col", "path", "severity", "code", "message"} for d in bad["diagnostics"])
