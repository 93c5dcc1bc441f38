"""einc draw: dataflow graph + derivation tree, coloured by group, collapsible, .svg and .png."""

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

import einc
from einc.cli import main
from einc.draw import COLOURS, DrawError, draw, view

G = einc.load("einspace")
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
BLOCK = "sequential(branching(clone(b=2), [sequential(linear(d=16), relu), identity], add), linear(d=32))"
SHAPE = (16, 8, 16)
REPEAT = "branching(group-dim(dim=2, b=4), [linear(d=16)]*4, concat(dim=2, b=4))"


def _texts(svg: str) -> list[str]:
    return [re.sub(r"<[^>]+>", "", t).strip() for t in re.findall(r"<text[^>]*>(.*?)</text>", svg, re.S)]


def test_svg_has_every_op_coloured_by_group_and_edges_labelled(tmp_path):
    arch = G.parse(BLOCK, SHAPE)
    out = draw(arch, SHAPE, tmp_path / "a.svg")
    svg = out.read_text()
    texts = _texts(svg)
    for group in ("branching", "aggregation", "routing", "computation"):
        assert COLOURS[group] in svg.lower(), group
    # each op appears twice (dataflow box and tree leaf); nonterminals in the tree
    for op in ("clone(b=2)", "linear(d=16)", "relu", "identity", "add", "linear(d=32)"):
        assert texts.count(op) == 2, (op, texts)
    assert "sequential" in texts and "branching" in texts
    assert "input Im[16x8x16]" in texts and "output Im[16x8x32]" in texts
    assert "Im[16x8x32]" in texts  # the edge out of linear(d=32) carries its feature
    assert "#000000" in svg and "#cc0000" in svg  # input black, output red


def test_a_repeated_subtree_is_drawn_once_and_marked(tmp_path):
    svg = draw(G.parse(REPEAT, (3, 16, 16)), (3, 16, 16), tmp_path / "r.svg").read_text()
    texts = _texts(svg)
    assert texts.count("linear(d=16)") == 2  # once in the graph, once in the tree
    assert "\u00d74" in texts


def test_depth_collapses_deeper_modules(tmp_path):
    text = (EXAMPLES / "resnet18.arch").read_text()
    arch = G.parse(text, (3, 64, 64))
    full = view(arch.tree, G.library, (3, 64, 64))
    two = view(arch.tree, G.library, (3, 64, 64), depth=2)
    assert full.ops == two.ops == 121 and full.params == two.params == 11_210_560
    svg = draw(arch, (3, 64, 64), tmp_path / "d.svg", depth=2).read_text()
    texts = _texts(svg)
    assert texts.count("branching(\u2026)") == 2 * 7  # 7 residual blocks, in both panels
    assert "12 ops, 74.1k params" in texts
    assert len(texts) < 200
    assert len(_texts(draw(arch, (3, 64, 64), tmp_path / "f.svg").read_text())) > 400


def test_png_and_bad_suffix(tmp_path):
    arch = G.parse(BLOCK, SHAPE)
    png = draw(arch, SHAPE, tmp_path / "a.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(DrawError):
        draw(arch, SHAPE, tmp_path / "a.pdf")


def test_cli_draws_files_and_strings(tmp_path):
    out = tmp_path / "vit.svg"
    r = CliRunner().invoke(main, ["draw", str(EXAMPLES / "vit.arch"), "--input", "3,64,64", "--depth", "2",
                                  "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert "vit.arch" in _texts(out.read_text())
    r = CliRunner().invoke(main, ["draw", BLOCK, "--input", "16,8,16", "-o", str(tmp_path / "b.png")])
    assert r.exit_code == 0 and (tmp_path / "b.png").exists()


def test_cli_bad_input_is_one_located_error(tmp_path):
    bad = tmp_path / "bad.arch"
    bad.write_text("sequential(\n  relu,\n  foo\n)\n")
    r = CliRunner().invoke(main, ["draw", str(bad), "-o", str(tmp_path / "x.svg")])
    assert r.exit_code == 1 and r.output.startswith(f"{bad}:3:3: error:") and "Traceback" not in r.output
    r = CliRunner().invoke(main, ["draw", BLOCK, "--input", "3,8,8", "-o", str(tmp_path / "x.svg")])
    assert r.exit_code == 1 and "[shape]" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(main, ["draw", BLOCK, "--input", "16,8,16", "-o", str(tmp_path / "x.pdf")])
    assert r.exit_code == 2
    r = CliRunner().invoke(main, ["draw", BLOCK, "--input", "16,8,16", "-o", str(tmp_path / "no" / "x.svg")])
    assert r.exit_code == 1 and "cannot write" in r.output and "Traceback" not in r.output


def test_cli_draws_with_a_plugin_grammar(tmp_path):
    plugins = Path(__file__).resolve().parent / "data" / "plugins"
    out = tmp_path / "p.svg"
    r = CliRunner().invoke(main, ["draw", "sequential(linear(d=8), running-max)", "-g", str(plugins / "cummax.ein"),
                                  "--plugin", str(plugins / "cummax.py"), "-o", str(out)])
    assert r.exit_code == 0, r.output
    texts = _texts(out.read_text())
    assert texts.count("running-max") == 2 and "input Col[4x8]" in texts
