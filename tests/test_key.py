"""Architecture.key: one key per network, whichever derivation wrote it; a new key for a new function."""

from __future__ import annotations

import random
import zlib

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import einc
import einc.testing
from einc.key import key
from einc.mutate import mutate
from einc.sample import Sampler, SamplingError
from einc.tree import Expansion, Fork, Leaf, Node

G = einc.load("einspace")
SHAPE = (3, 8, 8)
ARCHS = einc.testing.architectures(G, input_shape=SHAPE)


def k(text: str) -> str:
    return G.parse(text, SHAPE).key


def test_the_issue_examples():
    assert k("sequential(relu, sequential(norm, linear(d=16)))") == \
        k("sequential(sequential(relu, norm), linear(d=16))")
    assert k("branching(clone(b=2), [relu, norm], add)") == k("branching(clone(b=2), [norm, relu], add)")
    assert k("branching(clone(b=2), [relu, norm], concat(dim=1, b=2))") != \
        k("branching(clone(b=2), [norm, relu], concat(dim=1, b=2))")


@pytest.mark.parametrize("a, b", [
    ("sequential(relu, norm)", "sequential(norm, relu)"),                                    # op order
    ("sequential(relu, linear(d=16))", "sequential(relu, linear(d=32))"),                    # a hyperparameter
    ("branching(group-dim(dim=2, b=2), [relu, norm], add)",                                  # pieces differ
     "branching(group-dim(dim=2, b=2), [norm, relu], add)"),
    ("branching(clone(b=2), [relu, norm], matmul(scaled=false))",                            # not commutative
     "branching(clone(b=2), [norm, relu], matmul(scaled=false))"),
    ("sequential(relu, identity)", "branching(clone(b=2), [relu, identity], add)"),          # a residual stays
])
def test_a_different_function_has_a_different_key(a, b):
    assert k(a) != k(b)


@pytest.mark.parametrize("a, b", [
    ("sequential(identity, sequential(relu, identity))", "sequential(relu, identity)"),
    ("routing(permute(o=(2, 3, 1)), routing(permute(o=(3, 1, 2)), relu, identity), identity)",  # they compose to ()
     "sequential(relu, identity)"),
    ("routing(permute(o=(2, 3, 1)), identity, permute(o=(2, 3, 1)))",
     "routing(permute(o=(3, 1, 2)), identity, identity)"),
    ("routing(im2col(k=1, s=1, p=0), identity, col2im)", "sequential(identity, identity)"),
])
def test_identities_vanish_and_permutes_compose(a, b):
    assert k(a) == k(b)
    assert same_outputs(G.parse(a, SHAPE).tree, G.parse(b, SHAPE).tree)


def test_the_key_is_stable_text():
    """Journals are replayed by keys: a change of the hashing scheme shows here first."""
    arch = G.parse("branching(clone(b=2), [relu, softmax], add)", SHAPE)
    assert arch.key == key(arch.tree) == "aeef563cc78f4030"


def test_a_deep_chain_has_a_key():
    text = "sequential(" + ", ".join(["relu", "norm"] * 2000) + ")"
    assert len(G.parse(text).key) == 16


# ---------------------------------------------------------------- properties


def outputs(tree: Node) -> torch.Tensor:
    """The network's output on a fixed input, every weight drawn by its shape alone (float64, eval
    mode): the same ops in another place or order get the same weights, so equal networks agree."""
    gm = einc.build(G.architecture(tree, "Im"), SHAPE, optimize=False, check=False).double().eval()
    with torch.no_grad():
        for p in gm.parameters():
            gen = torch.Generator().manual_seed(zlib.crc32(repr(tuple(p.shape)).encode()))
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) / p.shape[-1] ** 0.5)
        x = torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        return gm(x)


def same_outputs(a: Node, b: Node) -> bool:
    x, y = outputs(a), outputs(b)
    return x.shape == y.shape and torch.allclose(x, y, rtol=1e-9, atol=1e-9 * (1 + float(x.abs().max())),
                                                 equal_nan=True)


def flat(node: Node) -> list[Node]:
    """What lowering reads: leaves and forks in order, expansions dropped."""
    if isinstance(node, Expansion):
        return [x for c in node.children for x in flat(c)]
    return [node]


def rewritten(node: Node, rnd: random.Random) -> Node:
    """``node`` computing the same network: sequences re-associated at random, identities
    inserted, the branches of clone-add forks shuffled."""
    items = flat(node)
    out: list[Node] = []
    for i, item in enumerate(items):
        if isinstance(item, Fork):
            kids = [rewritten(c, rnd) for c in item.children]
            symmetric = 0 < i < len(items) - 1 and getattr(items[i - 1], "op", "") == "clone" \
                and getattr(items[i + 1], "op", "") == "add"
            if symmetric and not item.repeated:
                rnd.shuffle(kids)
            item = Fork(tuple(kids), item.repeated, item.copies)
        out.append(item)
        one_feature = isinstance(item, Leaf) and G.library[item.op].group != "branching"
        if one_feature and rnd.random() < 0.2:
            out.append(Leaf("identity"))
    return bracketed(out, rnd)


def bracketed(items: list[Node], rnd: random.Random) -> Node:
    """One random binary bracketing of a sequence (an Expansion per pair)."""
    if len(items) == 1:
        return Expansion("M", None, (items[0],))
    cut = rnd.randrange(1, len(items))
    return Expansion("M", "sequential", (bracketed(items[:cut], rnd), bracketed(items[cut:], rnd)))


@given(ARCHS, st.integers(0, 2**32))
def test_rewrites_that_keep_the_function_keep_the_key(arch, seed):
    tree = rewritten(arch.tree, random.Random(seed))
    assert key(tree) == arch.key
    assert same_outputs(tree, arch.tree)  # the rewrite is an equal network indeed


@given(ARCHS, st.integers(0, 2**32))
def test_networks_that_compute_differently_have_different_keys(arch, seed):
    """A mutated network whose outputs differ (same weights by shape) never shares its parent's key;
    one that shares the key computes the same outputs."""
    try:
        child = mutate(arch.tree, Sampler(G.table, SHAPE, einc.testing.SMALL), random.Random(seed))
    except SamplingError:
        return
    assert (key(child) == arch.key) <= same_outputs(child, arch.tree)
