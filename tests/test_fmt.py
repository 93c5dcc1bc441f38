"""einc fmt: the canonical indented form round-trips, is idempotent and stays within its width."""

import random
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

import einc
from einc.cli import main
from einc.derivation import parse
from einc.fmt import fmt, fmt_text, parse_any_mode
from einc.notation import show
from einc.sample import Budget, Sampler

G = einc.load("einspace")
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SEED_FILES = sorted(EXAMPLES.glob("*.arch"))


def _check(tree, width=100):
    text = fmt(tree, width)
    back = parse_any_mode(text, G.table)
    assert back == tree, text
    assert fmt(back, width) == text  # idempotent
    assert all(len(line) <= width or _unbreakable(line) for line in text.splitlines()), text
    if len(show(tree)) <= width:
        assert text == show(tree)  # short trees stay on one line


@pytest.mark.parametrize("path", SEED_FILES, ids=lambda p: p.stem)
def test_seed_files_are_formatted_and_round_trip(path):
    text = path.read_text(encoding="utf-8")
    tree = parse_any_mode(text, G.table)
    assert parse_any_mode(show(tree), G.table) == tree
    assert text == fmt(tree) + "\n", f"einc fmt -i {path}"
    assert all(len(line) <= 100 for line in text.splitlines())
    _check(tree)
    _check(tree, 40)


def test_one_thousand_sampled_trees_round_trip():
    rng = random.Random(14)
    n = 0
    for shape, mode in (((3, 16, 16), "Im"), ((16, 32), "Col")):
        sampler = Sampler(G.table, shape, Budget(max_nodes=400))
        for _ in range(500):
            tree = sampler.sample(rng)
            width = rng.choice((100, 100, 60, 30))
            text = fmt(tree, width)
            assert parse(text, G.table, mode) == tree, text
            assert fmt(parse(text, G.table, mode), width) == text
            assert all(len(line) <= width or _unbreakable(line) for line in text.splitlines()), text
            n += 1
    assert n == 1000


_OP = re.compile(r"[a-z][a-z0-9_-]*(\((\w+=(\d+|true|false|\([\d, ]+\))(, )?)*\))?")


def _unbreakable(line: str) -> bool:
    """One operation, an opening name( or [, or a closing bracket: a line that cannot break."""
    s = line.strip().rstrip(",")
    return bool(_OP.fullmatch(s)) or s.endswith(("(", "[")) or s[:1] in ")]"


def test_layout_breaks_one_child_per_line():
    text = fmt_text("sequential(linear(d=64), relu, linear(d=32), norm)", G.table, width=30)
    assert text == "sequential(\n  linear(d=64),\n  relu,\n  linear(d=32),\n  norm\n)"
    text = fmt_text("branching(clone(b=2), [linear(d=64), identity], add)", G.table, width=30)
    assert text.splitlines() == ["branching(", "  clone(b=2),", "  [linear(d=64), identity],", "  add", ")"]


def test_cli_check_in_place_and_print(tmp_path):
    f = tmp_path / "a.arch"
    one_line = (EXAMPLES / "resnet_small.arch").read_text().replace("\n", " ")
    f.write_text(one_line)
    r = CliRunner().invoke(main, ["fmt", "--check", str(f)])
    assert r.exit_code == 1 and "not formatted" in r.output
    r = CliRunner().invoke(main, ["fmt", str(f)])
    assert r.exit_code == 0 and r.output == (EXAMPLES / "resnet_small.arch").read_text()
    assert f.read_text() == one_line  # printing changes nothing
    r = CliRunner().invoke(main, ["fmt", "-i", str(f)])
    assert r.exit_code == 0 and f.read_text() == (EXAMPLES / "resnet_small.arch").read_text()
    assert CliRunner().invoke(main, ["fmt", "--check", str(f)]).exit_code == 0
    col = tmp_path / "head.arch"  # a Col-mode block: found without --input
    col.write_text((EXAMPLES / "attention_head.arch").read_text())
    assert CliRunner().invoke(main, ["fmt", "--check", str(col)]).exit_code == 0


def test_cli_bad_input_is_one_located_error(tmp_path):
    f = tmp_path / "bad.arch"
    f.write_text("sequential(\n  relu,\n  foo\n)\n")
    r = CliRunner().invoke(main, ["fmt", str(f)])
    assert r.exit_code == 1
    assert r.output.startswith(f"{f}:3:3: error: ") and "Traceback" not in r.output
    r = CliRunner().invoke(main, ["fmt", str(tmp_path / "missing.arch")])
    assert r.exit_code == 1 and "cannot read" in r.output and "Traceback" not in r.output
    assert CliRunner().invoke(main, ["fmt", "-i", "--check", str(f)]).exit_code == 2
