"""Lowering to torch.fx: every op's real output shape is the inferred one, seeds build exactly."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import einc
from einc.errors import LoweringError
from einc.lower import lower
from einc.meta import BRANCH, PATH
from einc.ops import BUILTIN, Op
from einc.ops.base import single
from einc.tree import Expansion, Leaf, walk

from _builds import SEEDS, check, grammar, seed, unoptimised

IM, COL = (4, 8, 16), (6, 8)

# Small trees that together use every operation of the library (and every variant of the
# routing ops), in both modes where an op has a mode-specific lowering.
CASES: list[tuple[str, tuple[int, ...]]] = [
    ("sequential(relu, identity)", IM),
    ("sequential(norm, softmax)", IM),
    ("sequential(pos-enc, linear(d=16))", IM),
    ("routing(permute(o=(1, 3, 2)), relu, permute(o=(2, 1, 3)))", IM),
    ("routing(permute(o=(2, 3, 1)), linear(d=16), permute(o=(3, 1, 2)))", IM),
    ("routing(permute(o=(3, 2, 1)), relu, identity)", IM),
    ("routing(im2col(k=1, s=1, p=0), linear(d=16), col2im)", IM),
    ("routing(im2col(k=1, s=2, p=0), linear(d=16), col2im)", IM),
    ("routing(im2col(k=3, s=1, p=1), linear(d=16), col2im)", IM),
    ("routing(im2col(k=3, s=2, p=1), linear(d=16), col2im)", (4, 7, 9)),
    ("routing(im2col(k=4, s=4, p=0), linear(d=16), col2im)", IM),
    ("routing(im2col(k=8, s=8, p=0), linear(d=16), col2im)", (2, 16, 8)),
    ("routing(im2col(k=16, s=16, p=0), linear(d=16), col2im)", (2, 16, 32)),
    ("sequential(routing(im2col(k=4, s=4, p=0), linear(d=16), identity), sequential(norm, pos-enc))", IM),
    ("branching(clone(b=2), [relu, identity], add)", IM),
    ("branching(group-dim(dim=1, b=2), [relu, linear(d=16)], concat(dim=1, b=2))", IM),
    ("branching(group-dim(dim=3, b=4), [linear(d=16)]*4, concat(dim=2, b=4))", IM),
    ("branching(group-dim(dim=2, b=8), [relu]*8, add)", IM),
    ("branching(clone(b=2), [identity, routing(permute(o=(1, 3, 2)), relu, identity)],"
     " matmul(scaled=true))", IM),
    ("branching(clone(b=2), [linear(d=16), routing(identity, linear(d=16), permute(o=(2, 1)))],"
     " matmul(scaled=false))", COL),
    ("sequential(norm, softmax)", COL),
    ("routing(permute(o=(2, 1)), pos-enc, permute(o=(2, 1)))", COL),
    ("branching(group-dim(dim=2, b=2), [relu, softmax], concat(dim=2, b=2))", COL),
    ("branching(group-dim(dim=1, b=2), [relu, identity], concat(dim=1, b=2))", COL),
]


def _ops(arch: einc.Architecture) -> set[str]:
    return {n.op for _, n in walk(arch.tree) if isinstance(n, Leaf)}


def test_cases_cover_the_library():
    used = set().union(*(_ops(grammar().parse(s, shape)) for s, shape in CASES))
    assert used == set(BUILTIN)


@pytest.mark.parametrize("text, shape", CASES)
@pytest.mark.parametrize("optimize", [False, True], ids=["raw", "optimised"])
def test_real_shape_is_inferred_shape(text, shape, optimize):
    arch = grammar().parse(text, shape)
    gm = einc.build(arch, shape, optimize=optimize, check=False)
    gm.graph.lint()
    check(gm, arch, shape)
    assert sum(p.numel() for p in gm.parameters()) == arch.infer(shape).params
    gm.train()  # and in training mode, with gradients everywhere
    x = torch.randn(2, *shape, requires_grad=True)
    gm(x).sum().backward()
    assert x.grad is not None and all(p.grad is not None for p in gm.parameters())


@pytest.mark.parametrize("name", SEEDS)
def test_seed_builds_with_exact_shape_and_parameters(name):
    gm = unoptimised(name)
    gm.graph.lint()
    check(gm, seed(name), SEEDS[name])
    assert sum(p.numel() for p in gm.parameters()) == seed(name).infer(SEEDS[name]).params


def test_names_are_flat_readable_and_in_order():
    gm = unoptimised("resnet_block")
    assert [n for n, _ in gm.named_children()] == ["linear_0", "norm_0", "linear_1", "norm_1"]
    assert [n for n, _ in unoptimised("vit").named_parameters(recurse=False)] == ["pos_0"]
    assert gm.meta["einc"]["arch"] == seed("resnet_block").text


@pytest.mark.parametrize("text, shape, width", [
    ("sequential(relu, routing(im2col(k=3, s=2, p=1), linear(d=32), col2im))", IM, 32),
    ("sequential(routing(im2col(k=4, s=4, p=0), linear(d=16), identity), relu)", IM, 16),
    ("sequential(norm, linear(d=32))", COL, 32),
])
def test_head_pools_positions_then_classifies(text, shape, width):
    arch = grammar().parse(text, shape)
    gm = einc.build(arch, shape, num_classes=7, optimize=False)
    check(gm, arch, shape)
    assert isinstance(gm.head, nn.Linear) and (gm.head.in_features, gm.head.out_features) == (width, 7)
    assert sum(p.numel() for p in gm.parameters()) == arch.infer(shape).params + width * 7 + 7
    x = torch.randn(2, *shape)
    backbone = einc.build(arch, shape, optimize=False)
    backbone.load_state_dict({k: v for k, v in gm.state_dict().items() if not k.startswith("head.")})
    feats = backbone.eval()(x)
    pooled = feats.mean((2, 3)) if feats.dim() == 4 else feats.mean(1)
    torch.testing.assert_close(gm.eval()(x), gm.head(pooled))


def test_repeated_subtree_has_separate_weights():
    text = "branching(group-dim(dim=1, b=4), [sequential(linear(d=16), norm)]*4, concat(dim=1, b=4))"
    arch = grammar().parse(text, IM)
    gm = einc.build(arch, IM, optimize=False)  # the fused form stacks the four weights (test_fusion)
    linears = [m for m in gm.modules() if isinstance(m, nn.Linear)]
    norms = [m for m in gm.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(linears) == len(norms) == 4
    assert len({m.weight.data_ptr() for m in linears}) == 4
    assert not all(torch.equal(linears[0].weight, m.weight) for m in linears[1:])
    assert sum(p.numel() for p in gm.parameters()) == arch.infer(IM).params == 4 * (16 * 16 + 16 + 2)
    # ViT: 4 layers x 4 heads x (q, k, v) each with its own Linear
    heads = [m for m in unoptimised("vit").modules() if isinstance(m, nn.Linear) and m.out_features == 64]
    assert len({id(m) for m in heads}) == 48


def test_build_leaves_the_global_rng_alone_after_init():
    arch = grammar().parse("sequential(relu, identity)", IM)
    torch.manual_seed(3)
    einc.build(arch, IM)  # no parameters: the shape check must not draw from the global stream
    after = torch.rand(1)
    torch.manual_seed(3)
    assert torch.equal(after, torch.rand(1))


def _same(features, **_):
    return (single(features),)


def _boom(ctx, nodes, features):
    raise RuntimeError("kaboom")


def test_a_failing_hook_is_a_lowering_error_with_the_node_path():
    lib = BUILTIN.extend([Op("boom", "computation", (), _same, lower=_boom),
                          Op("mute", "computation", (), _same)])
    tree = Expansion("S", "sequential", (Leaf("relu"), Expansion("M", None, (Leaf("boom"),))))
    with pytest.raises(LoweringError, match=r'lowering "boom" failed: RuntimeError: kaboom \(at node /1/0\)'):
        lower(tree, lib, IM)
    tree = Expansion("S", "sequential", (Leaf("relu"), Leaf("mute")))
    with pytest.raises(LoweringError, match=r'operation "mute" has no torch lowering \(at node /1\)'):
        lower(tree, lib, IM)


def test_a_bad_shape_is_reported_before_lowering():
    from einc.errors import ShapeError

    with pytest.raises(ShapeError, match="add of unequal shapes"):
        text = "sequential(branching(clone(b=2), [linear(d=32), identity], add), relu)"
        einc.build(grammar().parse(text, IM), IM)


def test_a_wrong_check_is_caught():
    arch = grammar().parse("sequential(relu, linear(d=16))", IM)
    gm = einc.build(arch, IM)
    other = grammar().parse("sequential(relu, linear(d=32))", IM)
    message = r"output has shape \(2, 4, 8, 16\); shape inference says \(2, 4, 8, 32\)"
    with pytest.raises(LoweringError, match=message):
        check(gm, other, IM)
    with pytest.raises(LoweringError, match="parsed for Im inputs"):
        einc.build(arch, COL)


def test_lower_runs_no_pass_and_records_the_inferred_output():
    arch = grammar().parse("routing(im2col(k=3, s=1, p=1), linear(d=16), col2im)", IM)
    gm = lower(arch.tree, grammar().library, IM, num_classes=5)
    assert not any(isinstance(m, nn.Conv2d) for m in gm.modules())
    assert gm.meta["einc"]["output_shape"] == (5,) and gm.meta["einc"]["arch"] == arch.text


def test_copies_of_a_repeated_fork_are_tagged_apart():
    text = "branching(group-dim(dim=1, b=4), [sequential(linear(d=16), norm)]*4, concat(dim=1, b=4))"
    gm = einc.build(grammar().parse(text, IM), IM, optimize=False)
    nodes = {n.name: n for n in gm.graph.nodes}
    fork = (1,)  # the fork is the branching expansion's second child
    for i in range(4):
        linear, norm = nodes[f"linear_{i}"], nodes[f"norm_{i}"]
        assert linear.meta[PATH] == nodes["linear_0"].meta[PATH]  # one subtree for every copy
        assert linear.meta[BRANCH] == norm.meta[BRANCH] == ((fork, i),)
        assert linear.args[0].meta[BRANCH] == ((fork, i),)  # the group-dim's piece i is copy i's
    assert nodes["chunk"].meta[BRANCH] == nodes["cat"].meta[BRANCH] == ()
