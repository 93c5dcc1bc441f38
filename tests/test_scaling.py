"""The compile stages grow linearly with the network: checked by memory and by work done, not by
time (bench/bench_compile.py times them)."""

from __future__ import annotations

import copy
import pickle
import tracemalloc

import pytest
import torch.fx as fx

import einc
from einc.derivation import _parse_cached, _Resolve
from einc.errors import ArchError
from einc.lower import lower
from einc.passes import optimize
from einc.tree import Trail

G = einc.load("einspace")
SHAPE = (3, 8, 8)


def chain(n: int) -> str:
    return "sequential(" + ", ".join(["relu", "linear(d=64)"] * (n // 2)) + ")"


def peak_bytes(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


STAGES = {
    "parse": lambda text: (_parse_cached.cache_clear(), G.parse(text)),
    "infer": lambda text: G.parse(text).infer(SHAPE),
    "lower": lambda text: lower(G.parse(text).tree, G.library, SHAPE),
}


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_memory_grows_linearly_with_a_chain(stage):
    """A path tuple per node (O(depth) each) made these quadratic: 4x the ops took 16x the memory."""
    small, big = chain(400), chain(1600)
    for text in (small, big):
        G.parse(text)  # parsed (and cached) outside the measure, but for "parse"
    ratio = peak_bytes(lambda: STAGES[stage](big)) / peak_bytes(lambda: STAGES[stage](small))
    assert ratio < 6, ratio  # linear: about 4


def test_a_valid_string_parses_without_making_an_error(monkeypatch):
    """An error's message quotes its line of the string, O(length) to make: trying linear(d=64)
    against each variant linear(d=...) by raising made parsing quadratic (8,000 ops: 32 s)."""
    made = []
    monkeypatch.setattr(_Resolve, "error", lambda self, *a: made.append(a))
    _parse_cached.cache_clear()
    G.parse(chain(200) + " ", SHAPE)
    assert made == []
    with pytest.raises(ArchError, match="linear.d=3. is not a variant the grammar allows here"):
        monkeypatch.undo()
        G.parse("sequential(relu, linear(d=3))")


def test_the_pipeline_recompiles_once(monkeypatch):
    """Each pass alone lints and recompiles; inside ``optimize`` that happens once, at the end."""
    raw = einc.build(G.parse("branching(clone(b=2), [linear(d=16), linear(d=16)], add)", SHAPE), SHAPE,
                     optimize=False, check=False)
    gm = copy.deepcopy(raw)
    calls = []
    original = fx.GraphModule.recompile
    monkeypatch.setattr(fx.GraphModule, "recompile", lambda self: (calls.append(1), original(self))[1])
    optimize(gm, device="cpu")
    assert len(calls) == 1
    assert len(list(gm.modules())) < len(list(raw.modules()))  # the two linears became one
    assert gm.code == gm.graph.python_code("self").src  # and the code is the rewritten graph's


def test_a_trail_stands_for_its_path():
    t = Trail(Trail(Trail(), 2), 0)
    same = Trail(Trail(Trail(), 2), 0)
    assert t == same == (2, 0) and t != Trail(Trail(Trail(), 2), 1) and Trail() == ()
    assert hash(t) == hash((2, 0)) and {t: 1}[(2, 0)] == 1
    assert list(t) == [2, 0] and len(t) == 2 and t[:1] == (2,) and t.path == (2, 0)
    assert copy.deepcopy(t) is t and pickle.loads(pickle.dumps(t)) == t
