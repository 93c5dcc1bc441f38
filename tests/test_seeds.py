"""The bundled seeds: the published WRN-16-4 and MLP-Mixer, and what ``--seeds mix`` means."""

from pathlib import Path

import pytest

import einc
from einc.seeds import MIX, SeedError, named_seeds, seed_names
from einc.tree import Expansion, Fork, walk

ROOT = Path(__file__).resolve().parent.parent
G = einc.load("einspace")
SHAPE = (3, 64, 64)

# Backbone parameters at 3x64x64 of einspace's published seed_architectures.py.
PUBLISHED = {"resnet18": 11_210_560, "wrn16_4_published": 2_748_576, "vit": 4_367_872,
             "mixer_published": 6_472_192}
TEXTBOOK = {"wrn16_4": 2_749_472, "mixer": 6_480_384}


@pytest.mark.parametrize("name,params", sorted({**PUBLISHED, **TEXTBOOK}.items()))
def test_parameter_counts_at_64x64(name, params):
    (pair,) = named_seeds(name)
    assert pair[0] == name
    assert G.parse(pair[1], SHAPE).infer(SHAPE).params == params


def test_mix_is_the_four_published_seeds_in_order():
    pairs = named_seeds("mix")
    assert tuple(n for n, _ in pairs) == MIX == ("resnet18", "wrn16_4_published", "vit", "mixer_published")
    assert len({t for _, t in pairs}) == 4
    assert "mix" in seed_names() and "wrn16_4_published" in seed_names()


def test_bundled_copies_equal_the_examples():
    for name in seed_names():
        if name == "mix":
            continue
        example = ROOT / "examples" / f"{name}.arch"
        assert example.read_text() == (ROOT / "grammar" / "seeds" / f"{name}.arch").read_text(), name


@pytest.mark.parametrize("bad", ["nope", "../grammar/einspace", "", "mix/.."])
def test_unknown_names_are_one_line_errors(bad):
    with pytest.raises(SeedError) as e:
        named_seeds(bad)
    assert "\n" not in str(e.value) and "resnet18" in str(e.value)


def _blocks(tree):
    """The residual blocks: (branch 0 ops, branch 1 ops, ops right after the add) per 2-way fork."""
    return [n for _, n in walk(tree) if isinstance(n, Fork) and not n.repeated and n.copies == 2]


def _ops(node):
    return [n.op for _, n in walk(node) if not isinstance(n, (Expansion, Fork))]


def test_wrn_published_structure():
    tree = G.parse(named_seeds("wrn16_4_published")[0][1], SHAPE).tree
    forks = _blocks(tree)
    assert len(forks) == 6
    shortcuts = [_ops(f.children[1]) for f in forks]
    # no norm on any shortcut: identity or a bare 1x1 convolution
    assert all("norm" not in s for s in shortcuts)
    assert sum(s == ["im2col", "linear", "col2im"] for s in shortcuts) == 3
    # every block: conv, norm, relu, conv on the main branch (no norm after the second conv)
    for f in forks:
        assert _ops(f.children[0]) == ["im2col", "linear", "col2im", "norm", "relu", "im2col", "linear", "col2im"]
    # and norm, relu after each add: 6 adds each followed by norm then relu in the op sequence
    ops = _ops(tree)
    adds = [i for i, o in enumerate(ops) if o == "add"]
    assert len(adds) == 6 and all(ops[i + 1:i + 3] == ["norm", "relu"] for i in adds)
    textbook = _ops(G.parse(named_seeds("wrn16_4")[0][1], SHAPE).tree)
    assert textbook.count("norm") == ops.count("norm") + 3  # the textbook has a norm on each of 3 shortcuts


def test_mixer_published_is_one_residual_block_per_layer():
    tree = G.parse(named_seeds("mixer_published")[0][1], SHAPE).tree
    forks = _blocks(tree)
    assert len(forks) == 8
    for f in forks:
        assert _ops(f.children[1]) == ["identity"]
        # norm -> token mixing (over the 256 tokens, x4) -> channel mixing (512 -> 256 -> 512)
        assert _ops(f.children[0]) == ["norm", "permute", "linear", "identity", "relu", "identity", "linear",
                                       "permute", "linear", "relu", "linear"]
    textbook = G.parse(named_seeds("mixer")[0][1], SHAPE).tree
    assert len(_blocks(textbook)) == 16
