"""The local passes (conv fusion, permute chains, operand order, dead code) and the pipeline are exact:
the optimised module computes what the lowered one computes."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from einc.passes import CPU, PIPELINE, dead_code, fuse_convolutions, optimize, remove_permutes
from einc.verify import assert_same_function

from _builds import SEEDS, check, lowered, optimised, seed, unoptimised

IM, COL = (4, 8, 16), (6, 8)


def _targets(gm: fx.GraphModule) -> list:
    return [n.target for n in gm.graph.nodes if n.op in ("call_function", "call_method")]


@pytest.mark.parametrize("name", SEEDS)
def test_optimised_seed_is_the_same_function(name):
    gm = optimised(name)
    check(gm, seed(name), SEEDS[name])
    assert_same_function(unoptimised(name), gm, SEEDS[name])
    assert sum(p.numel() for p in gm.parameters()) == seed(name).infer(SEEDS[name]).params


@pytest.mark.parametrize("one_pass", list(dict.fromkeys(PIPELINE)), ids=lambda p: p.__name__)
@pytest.mark.parametrize("name", ["resnet_block", "attention_head"])
def test_each_pass_alone_is_exact(name, one_pass):
    gm = copy.deepcopy(unoptimised(name))
    one_pass(gm, CPU)
    gm.graph.lint()
    assert_same_function(unoptimised(name), gm, SEEDS[name])


def test_resnet18_becomes_convolutions():
    gm = optimised("resnet18")
    convs = [m for m in gm.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 21  # stem, downsampling conv, 16 in blocks, 3 strided shortcuts
    assert not any(isinstance(m, nn.Linear) for m in gm.modules())
    assert F.unfold not in _targets(gm) and "transpose" not in _targets(gm) and "reshape" not in _targets(gm)
    assert {(c.kernel_size, c.stride, c.padding) for c in convs} == {
        ((3, 3), (1, 1), (1, 1)), ((3, 3), (2, 2), (1, 1)), ((1, 1), (2, 2), (0, 0))}
    assert [n for n, _ in gm.named_children()][:3] == ["conv_0", "norm_0", "conv_1"]


def test_conv_weights_are_the_linear_weights():
    raw = unoptimised("resnet_block")
    gm = optimised("resnet_block")
    w = raw.linear_0.weight
    assert torch.equal(gm.conv_0.weight, w.reshape(64, 64, 3, 3))
    assert torch.equal(gm.conv_0.bias, raw.linear_0.bias)
    assert set(gm.state_dict()) == {k.replace("linear_", "conv_") for k in raw.state_dict()}


@pytest.mark.parametrize("text", [
    "routing(im2col(k=3, s=1, p=1), sequential(norm, linear(d=16)), col2im)",   # each patch normalised
    "routing(im2col(k=4, s=4, p=0), routing(permute(o=(2, 1)), linear(d=16), identity), identity)",  # positions
    "routing(im2col(k=3, s=2, p=1), branching(clone(b=2), [linear(d=16), softmax], concat(dim=2, b=2)),"
    " col2im)",  # the patches read by more than linears
])
def test_no_fusion_where_the_chain_is_not_a_convolution(text):
    raw = lowered(text, IM)
    gm = copy.deepcopy(raw)
    assert fuse_convolutions(gm) == 0
    optimize(gm, device="cpu")
    assert not any(isinstance(m, nn.Conv2d) for m in gm.modules())
    assert_same_function(raw, gm, IM)


@pytest.mark.parametrize("shape", [(3, 9, 13), (2, 16, 16)])
@pytest.mark.parametrize("k, s, p", [(1, 1, 0), (1, 2, 0), (3, 1, 1), (3, 2, 1), (4, 4, 0), (8, 8, 0)])
def test_every_im2col_variant_fuses(k, s, p, shape):
    if shape[1] + 2 * p < k or shape[2] + 2 * p < k:
        pytest.skip("kernel larger than the input")
    text = f"sequential(routing(im2col(k={k}, s={s}, p={p}), linear(d=16), col2im), relu)"
    raw = lowered(text, shape)
    gm = optimize(copy.deepcopy(raw), device="cpu")
    assert sum(isinstance(m, nn.Conv2d) for m in gm.modules()) == 1
    assert_same_function(raw, gm, shape)


@pytest.mark.parametrize("text, shape, left", [
    ("routing(permute(o=(2, 3, 1)), identity, permute(o=(3, 1, 2)))", IM, 0),      # composes to identity
    ("routing(permute(o=(2, 3, 1)), identity, permute(o=(2, 3, 1)))", IM, 1),      # two become one
    ("routing(permute(o=(2, 1)), identity, permute(o=(2, 1)))", COL, 0),
    ("sequential(routing(permute(o=(1, 3, 2)), identity, permute(o=(2, 1, 3))),"     # three become one,
     " routing(permute(o=(3, 2, 1)), relu, permute(o=(1, 3, 2))))", IM, 2),          # the last stays

    # im2col's own transpose cancels the permute that follows it
    ("routing(im2col(k=4, s=4, p=0), identity, permute(o=(2, 1)))", IM, 0),
])
def test_permute_chains_fold(text, shape, left):
    raw = lowered(text, shape)
    gm = copy.deepcopy(raw)
    assert remove_permutes(gm) > 0
    dead_code(gm)
    assert sum(t in ("permute", "transpose") for t in _targets(gm)) == left
    assert_same_function(raw, gm, shape)


def test_a_permute_with_other_users_stays_for_them():
    text = "branching(clone(b=2), [routing(permute(o=(2, 1)), identity, permute(o=(2, 1))), softmax], add)"
    raw = lowered("routing(permute(o=(2, 1)), " + text + ", permute(o=(2, 1)))", COL)
    gm = optimize(copy.deepcopy(raw), device="cpu")
    assert_same_function(raw, gm, COL)


def test_dead_code_drops_nodes_modules_and_parameters():
    gm = copy.deepcopy(unoptimised("patch_embedding"))
    x = next(n for n in gm.graph.nodes if n.op == "placeholder")
    out = next(n for n in gm.graph.nodes if n.op == "output")
    gm.add_submodule("spare", nn.Linear(3, 3))
    gm.register_parameter("unused", nn.Parameter(torch.zeros(2)))
    with gm.graph.inserting_before(out):
        gm.graph.call_module("spare", (gm.graph.call_function(torch.relu, (x,)),))  # read by nobody
    gm.recompile()
    assert dead_code(gm) == 3
    assert not hasattr(gm, "spare") and not hasattr(gm, "unused")
    assert torch.relu not in _targets(gm)
    assert_same_function(unoptimised("patch_embedding"), gm, SEEDS["patch_embedding"])
