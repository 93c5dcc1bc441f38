"""The fusions (convolutions, horizontal, CSE, merged linears, attention) are exact: fused and unfused
networks compute the same function with the same weights, and state dicts convert both ways."""

from __future__ import annotations

import copy
import operator

import pytest
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

import einc
from einc.emit import emit, load_source
from einc.meta import BATCHED, STACKED
from einc.passes import (
    CPU,
    CUDA,
    LOCAL,
    batch_branches,
    cost_model,
    dedupe,
    fuse_attention,
    fuse_convolutions,
    merge_linears,
    optimize,
    order_add_operands,
    pack_state_dict,
    reshape_patches,
    unpack_state_dict,
)
from einc.testing import SMALL
from einc.verify import assert_same_function

from _builds import (
    SEEDS,
    check,
    check_sampled,
    fused_like,
    lowered,
    round_trip,
    same_in_training,
    same_when_emitted,
    seed,
    unoptimised,
)

IM, COL = (4, 8, 16), (6, 8)
FOUR = ["resnet18", "wrn16_4", "vit", "mixer"]


def _local(raw: fx.GraphModule) -> fx.GraphModule:
    """A copy of ``raw`` after the local passes (those before the fusions in the pipeline)."""
    return optimize(copy.deepcopy(raw), cost=CPU, passes=LOCAL)


def _calls(gm: fx.GraphModule, target) -> int:
    return sum(n.target is target or n.target == target for n in gm.graph.nodes if n.op != "call_module")


# ---------------------------------------------------------------- the four seeds


@pytest.mark.parametrize("name", FOUR)
def test_fused_seed_is_the_same_function(name):
    raw, shape = unoptimised(name), SEEDS[name]
    gm = fused_like(raw, seed(name), shape)
    check(gm, seed(name), shape)
    assert sum(p.numel() for p in gm.parameters()) == seed(name).infer(shape).params
    assert_same_function(raw, gm, shape)
    round_trip(raw, gm)


def test_vit_heads_become_one_linear_and_attention():
    gm = fused_like(unoptimised("vit"), seed("vit"), SEEDS["vit"])
    linears = [m for m in gm.modules() if isinstance(m, nn.Linear)]
    assert sum((m.in_features, m.out_features) == (512, 768) for m in linears) == 4  # Q, K, V of 4 heads
    assert not any(m.out_features == 64 for m in linears)
    assert _calls(gm, F.scaled_dot_product_attention) == 4
    assert _calls(gm, torch.matmul) == _calls(gm, torch.softmax) == 0
    same_in_training(unoptimised("vit"), gm, SEEDS["vit"])
    source = emit(gm)
    assert "self.linear_1 = nn.Linear(512, 768)" in source
    assert "F.scaled_dot_product_attention(" in source and "scale=0.125" in source


def test_resnet_trains_the_same_fused():
    gm = fused_like(unoptimised("resnet18"), seed("resnet18"), SEEDS["resnet18"])
    same_in_training(unoptimised("resnet18"), gm, SEEDS["resnet18"])


@pytest.mark.parametrize("name", ["vit", "resnet18"])
def test_emitted_fused_seed_is_the_same_module(name):
    gm = einc.build(seed(name), SEEDS[name], num_classes=10, device="cpu")
    source = emit(gm)
    net = load_source(source, name)["Net"]()
    net.load_state_dict(gm.state_dict())
    assert_same_function(gm, net, SEEDS[name], double=False, rtol=1e-5, atol=1e-6)
    assert source == emit(copy.deepcopy(gm))


def test_mixer_residual_sum_keeps_the_contiguous_layout():
    gm = optimize(copy.deepcopy(unoptimised("mixer")), device="cpu")
    assert order_add_operands(gm) == 0  # already done by optimize: 8 token-mixing sums reordered
    raw = copy.deepcopy(unoptimised("mixer"))
    assert order_add_operands(raw) == 8
    assert_same_function(unoptimised("mixer"), raw, SEEDS["mixer"], rtol=0, atol=0)


# ---------------------------------------------------------------- convolutions from im2col


@pytest.mark.parametrize("text, convs, left", [
    # the README search's best network: a 3x3 convolution, then a 1x1
    ("routing(im2col(k=3, s=1, p=1), sequential(linear(d=64), linear(d=256)), col2im)", [3, 1], []),
    ("routing(im2col(k=3, s=2, p=1), sequential(linear(d=16), relu, linear(d=32), softmax), col2im)", [3, 1],
     [F.leaky_relu, torch.softmax]),
    # f(0) = 0 before the linear: applied to the image, in front of the unfold
    ("routing(im2col(k=3, s=1, p=1), sequential(relu, linear(d=16)), col2im)", [3], [F.leaky_relu]),
    # a clone of the patches into linears: one convolution each, of one channels-last image
    ("routing(im2col(k=3, s=2, p=1), branching(clone(b=2), [linear(d=16), linear(d=16)], add), col2im)", [3, 3],
     ["contiguous", "permute", "reshape", "permute", "reshape", operator.add, "transpose", "reshape"]),
    # no col2im: the convolution's output read as the sequence (B, L, D), or as (B, D, L)
    ("routing(im2col(k=3, s=1, p=1), sequential(linear(d=16), norm, linear(d=16)), col2im)", [3],
     ["contiguous", "permute", "reshape", "transpose", "reshape"]),
    ("routing(im2col(k=3, s=1, p=1), linear(d=16), permute(o=(2, 1)))", [3], ["reshape"]),
    # a patch embedding: a strided convolution where the cost model says it pays (CUDA)
    ("routing(im2col(k=4, s=4, p=0), linear(d=16), identity)", [4], ["contiguous", "permute", "reshape"]),
    ("routing(im2col(k=8, s=8, p=0), sequential(linear(d=16), norm), permute(o=(2, 1)))", [8],
     ["contiguous", "permute", "reshape", "permute"]),
], ids=range(8))
def test_im2col_then_a_linear_becomes_a_convolution(text, convs, left):
    shape = (4, 16, 16)
    raw = lowered(text, shape)
    gm = copy.deepcopy(raw)
    assert fuse_convolutions(gm, CUDA) == 1 + text.count("clone")
    assert [m.kernel_size[0] for m in gm.modules() if isinstance(m, nn.Conv2d)] == convs
    assert not any(isinstance(m, nn.Linear) for m in gm.modules()) or "norm, linear" in text
    rest = [n.target for n in gm.graph.nodes if n.op in ("call_function", "call_method")]
    assert rest == left
    assert_same_function(raw, gm, shape)
    same_in_training(raw, gm, shape)
    round_trip(raw, gm)
    same_when_emitted(gm, shape)
    optimize(gm, device="cpu")  # the later passes take what it leaves
    assert_same_function(raw, gm, shape)


def test_on_cpu_a_patch_embedding_is_a_linear_of_reshaped_patches():
    shape = (4, 16, 16)
    raw = lowered("sequential(routing(im2col(k=4, s=4, p=0), linear(d=16), identity), pos-enc)", shape)
    gm = copy.deepcopy(raw)
    assert fuse_convolutions(gm, CPU) == 0
    optimize(gm, device="cpu")
    assert _calls(gm, F.unfold) == 0 and not any(isinstance(m, nn.Conv2d) for m in gm.modules())
    assert_same_function(raw, gm, shape)
    same_in_training(raw, gm, shape)


@pytest.mark.parametrize("k, s, p", [(1, 1, 0), (1, 2, 0), (3, 1, 1), (3, 2, 1), (4, 4, 0), (8, 8, 0), (16, 16, 0)])
@pytest.mark.parametrize("last", ["col2im", "identity"])
def test_every_im2col_variant_of_the_grammar_convolves(k, s, p, last):
    """On CUDA every one is a convolution; on CPU none keeps its unfold (a patch embedding, with
    stride > 1 and no col2im, stays a linear of the reshaped patches)."""
    shape = (3, 16, 32)
    raw = lowered(f"routing(im2col(k={k}, s={s}, p={p}), sequential(relu, linear(d=16), linear(d=32)), {last})",
                  shape)
    for cost in (CUDA, CPU):
        gm = optimize(copy.deepcopy(raw), cost=cost)
        assert _calls(gm, F.unfold) == 0
        embedding = cost is CPU and last == "identity" and s > 1 and p == 0
        assert sum(isinstance(m, nn.Conv2d) for m in gm.modules()) == (
            0 if embedding else 2 if last == "col2im" else 1)
        assert_same_function(raw, gm, shape)
        round_trip(raw, gm)


@pytest.mark.parametrize("text", [
    "routing(im2col(k=3, s=1, p=1), sequential(softmax, linear(d=16)), col2im)",  # softmax(0) != 0
    "routing(im2col(k=3, s=1, p=1), sequential(pos-enc, linear(d=16)), col2im)",  # a table per position
    "routing(im2col(k=3, s=1, p=1), branching(clone(b=2), [sequential(relu, linear(d=16)), relu],"
    " concat(dim=2, b=2)), col2im)",                                              # the patches read raw too
], ids=["softmax", "pos-enc", "read-raw"])
def test_patches_used_otherwise_keep_their_unfold(text):
    shape = (4, 8, 8)
    raw = lowered(text, shape)
    gm = copy.deepcopy(raw)
    assert fuse_convolutions(gm, CPU) == 0
    assert _calls(gm, F.unfold) == 1


@pytest.mark.parametrize("text, convs", [
    ("branching(clone(b=4), [routing(im2col(k=3, s=1, p=1), sequential(linear(d=16), relu, linear(d=16)),"
     " col2im)]*4, concat(dim=1, b=4))", 2),
    # a clone of the patches: b convolutions of one channels-last image, batched into one
    ("routing(im2col(k=3, s=1, p=1), branching(clone(b=4), [linear(d=16)]*4, concat(dim=2, b=4)), identity)", 1),
], ids=["blocks", "clone-of-patches"])
def test_convolutions_in_equal_branches_are_batched(text, convs):
    raw = lowered(text, IM)
    gm = optimize(copy.deepcopy(raw), device="cpu")
    assert _calls(gm, F.unfold) == 0 and any(n.meta.get(BATCHED) for n in gm.graph.nodes)
    assert sum(isinstance(m, nn.Conv2d) for m in gm.modules()) == convs
    assert_same_function(raw, gm, IM)
    same_in_training(raw, gm, IM)
    round_trip(raw, gm)


@pytest.mark.parametrize("k, s", [(1, 1), (1, 2), (4, 4), (8, 8)])
@pytest.mark.parametrize("shape", [(3, 16, 16), (2, 12, 20)], ids=str)
def test_windows_that_do_not_overlap_are_a_reshape(k, s, shape):
    text = f"sequential(norm, routing(im2col(k={k}, s={s}, p=0), sequential(softmax, norm), col2im))"
    raw = lowered(text, shape)
    gm = copy.deepcopy(raw)
    divides = shape[1] % s == 0 and shape[2] % s == 0  # 8 does not divide 12 x 20: unfold stays
    assert reshape_patches(gm, CPU) == divides
    assert _calls(gm, F.unfold) == (not divides)
    assert_same_function(raw, gm, shape)
    same_in_training(raw, gm, shape)  # the first norm's gradients pass back through the rearrangement
    same_when_emitted(gm, shape)


@pytest.mark.parametrize("k, s", [(1, 2), (4, 4)])
def test_a_batched_unfold_of_windows_that_do_not_overlap_is_a_reshape(k, s):
    """Horizontal fusion batches b branches' unfolds into one, of their images side by side."""
    text = (f"branching(clone(b=4), [sequential(norm, routing(im2col(k={k}, s={s}, p=0), softmax, col2im))]*4,"
            " concat(dim=1, b=4))")
    raw = lowered(text, IM)
    gm = optimize(copy.deepcopy(raw), device="cpu")
    assert _calls(gm, F.unfold) == 0 and any(n.meta.get(BATCHED) for n in gm.graph.nodes)
    assert_same_function(raw, gm, IM)
    same_when_emitted(gm, IM)


def test_overlapping_or_padded_windows_keep_their_unfold():
    for text in ("routing(im2col(k=3, s=2, p=1), softmax, col2im)", "routing(im2col(k=3, s=1, p=1), softmax, col2im)"):
        gm = lowered(text, IM)
        assert reshape_patches(gm, CPU) == 0 and _calls(gm, F.unfold) == 1


# ---------------------------------------------------------------- batching, case by case


@pytest.mark.parametrize("text, shape", [
    ("branching(clone(b=4), [sequential(linear(d=16), relu, linear(d=16))]*4, concat(dim=2, b=4))", COL),
    ("branching(clone(b=4), [sequential(linear(d=16), relu, linear(d=16))]*4, add)", COL),  # row-parallel
    ("branching(clone(b=8), [linear(d=16)]*8, add)", COL),                                   # summed weights
    ("branching(group-dim(dim=1, b=4), [sequential(linear(d=16), norm)]*4, concat(dim=1, b=4))", IM),
    ("branching(group-dim(dim=3, b=4), [linear(d=16)]*4, concat(dim=2, b=4))", IM),
    ("branching(group-dim(dim=2, b=2), [sequential(norm, pos-enc, softmax),"
     " sequential(norm, pos-enc, softmax)], concat(dim=1, b=2))", COL),
    ("branching(clone(b=4), [sequential(norm, relu)]*4, add)", IM),                    # BatchNorm of a clone
    ("branching(clone(b=2), [sequential(relu, linear(d=16)), sequential(relu, linear(d=16))], add)", COL),
    ("branching(clone(b=4), [routing(im2col(k=3, s=1, p=1), linear(d=16), col2im)]*4,"
     " concat(dim=1, b=4))", IM),
    ("branching(group-dim(dim=2, b=4), [routing(permute(o=(2, 1)), sequential(norm, linear(d=16)),"
     " permute(o=(2, 1)))]*4, concat(dim=2, b=4))", COL),
    ("branching(clone(b=4), [branching(group-dim(dim=2, b=2), [sequential(linear(d=16), softmax),"
     " sequential(linear(d=16), softmax)], add)]*4, concat(dim=1, b=4))", COL),               # nested
    ("branching(clone(b=4), [branching(clone(b=2), [sequential(linear(d=16), relu),"
     " routing(identity, linear(d=16), permute(o=(2, 1)))], matmul(scaled=true))]*4, add)", COL),
], ids=range(12))
def test_equal_branches_are_batched_exactly(text, shape):
    raw = lowered(text, shape)
    gm = _local(raw)
    assert batch_branches(gm, CPU) == 1
    assert_same_function(raw, gm, shape)
    optimize(gm, device="cpu")
    assert_same_function(raw, gm, shape)
    same_in_training(raw, gm, shape)
    round_trip(raw, gm)
    same_when_emitted(gm, shape)


@pytest.mark.parametrize("text, shape, batched", [
    # a concat dim that, counted from the end of the stacked value, would be the batch's: refused
    # (an overlapping unfold's stacked shape is unknown; one of 8 x 8 windows is a reshape, batched)
    ("sequential(branching(group-dim(dim=2, b=4), [routing(im2col(k=3, s=2, p=1), routing(permute(o=(2, 1)),"
     " softmax, identity), permute(o=(2, 1)))]*4, concat(dim=2, b=4)), linear(d=16))", (3, 32, 32), False),
    ("sequential(branching(group-dim(dim=2, b=4), [routing(im2col(k=8, s=8, p=0), routing(permute(o=(2, 1)),"
     " softmax, identity), permute(o=(2, 1)))]*4, concat(dim=2, b=4)), linear(d=16))", (3, 32, 32), True),
    # a value shared by every branch of an inner block, expanded into the outer stack
    ("branching(clone(b=4), [branching(clone(b=2), [relu, branching(clone(b=4), [branching(group-dim(dim=2, b=4),"
     " [linear(d=16)]*4, add)]*4, concat(dim=2, b=4))], concat(dim=2, b=2))]*4, concat(dim=2, b=4))", (16, 32), True),
    # the sum of b equal branches that do not depend on the branch: b times one
    ("branching(clone(b=4), [sequential(softmax, branching(group-dim(dim=1, b=8), [identity]*8,"
     " concat(dim=2, b=8)))]*4, add)", (16, 32), True),
], ids=["negative-dim", "reshaped-patches", "shared-expanded", "shared-sum"])
def test_rarer_stackings_found_by_sampling_are_exact(text, shape, batched):
    """Cut down from sampled networks that reached these paths of horizontal fusion only at
    0.8 GFLOPs or 20M parameters (tests/test_sample.py's sampled check stays below)."""
    raw = lowered(text, shape)
    gm = optimize(copy.deepcopy(raw), device="cpu")
    assert any(n.meta.get(BATCHED) for n in gm.graph.nodes) == batched
    assert_same_function(raw, gm, shape)
    same_in_training(raw, gm, shape)
    round_trip(raw, gm)
    same_when_emitted(gm, shape)


def _grouped(b: int, d: int, dim: int = 1) -> str:
    """group-dim(b) -> [conv(d)]*b -> concat over channels (the grammar writes b = 2 as a pair)."""
    conv = f"routing(im2col(k=3, s=1, p=1), linear(d={d}), col2im)"
    branches = f"[{conv}, {conv}]" if b == 2 else f"[{conv}]*{b}"
    return f"branching(group-dim(dim={dim}, b={b}), {branches}, concat(dim=1, b={b}))"


@pytest.mark.parametrize("text, shape", [
    ("branching(clone(b=2), [linear(d=16), linear(d=32)], concat(dim=2, b=2))", COL),      # different widths
    ("branching(clone(b=2), [relu, identity], add)", IM),                                  # different ops
    ("branching(clone(b=2), [relu, relu], matmul(scaled=false))", (6, 6)),                # not add / concat
    ("branching(clone(b=4), [identity]*4, concat(dim=1, b=4))", IM),                      # nothing per branch
    # large convolutions per split piece: as one grouped convolution, slower on CPU; left alone
    (_grouped(2, 32), (64, 32, 32)),
], ids=range(5))
def test_other_blocks_are_left_alone(text, shape):
    raw = lowered(text, shape)
    gm = _local(raw)
    assert batch_branches(gm, CPU) == 0
    assert_same_function(raw, gm, shape)


@pytest.mark.parametrize("b, dim", [(8, 1), (4, 2), (2, 3)])
def test_convolutions_of_split_pieces_become_one_grouped_convolution(b, dim):
    """group-dim(b) -> [conv]*b -> concat (the ConvMixer-style block): one Conv2d(groups=b)."""
    shape = (16, 8, 8)
    raw = lowered(_grouped(b, 16, dim), shape)
    gm = optimize(copy.deepcopy(raw), device="cpu")
    (conv,) = [m for m in gm.modules() if isinstance(m, nn.Conv2d)]
    assert conv.groups == b and (conv.in_channels, conv.out_channels) == (16 if dim == 1 else 16 * b, 16 * b)
    if dim == 1:  # the channels split: nothing around the convolution
        assert _calls(gm, torch.chunk) == _calls(gm, torch.cat) == 0
        assert [n.op for n in gm.graph.nodes] == ["placeholder", "call_module", "output"]
    assert_same_function(raw, gm, shape)
    same_in_training(raw, gm, shape)
    round_trip(raw, gm)
    same_when_emitted(gm, shape)
    assert f"groups={b}" in emit(gm)


def test_the_cost_model_chooses_per_device():
    raw = lowered(_grouped(2, 32), (64, 32, 32))
    shape = (64, 32, 32)
    assert batch_branches(_local(raw), CPU) == 0  # one grouped convolution would be slower
    gm = optimize(copy.deepcopy(raw), cost=CUDA)
    (conv,) = [m for m in gm.modules() if isinstance(m, nn.Conv2d)]
    assert conv.groups == 2
    assert_same_function(raw, gm, shape)  # exact whatever the device: only the form differs
    assert cost_model("cuda:1") is CUDA and cost_model("cpu") is CPU
    assert cost_model() is (CUDA if torch.cuda.is_available() else CPU)


def test_a_weight_used_twice_is_not_stacked():
    raw = lowered("branching(clone(b=2), [linear(d=16), linear(d=16)], add)", COL)
    gm = copy.deepcopy(raw)
    second = [n for n in gm.graph.nodes if n.op == "call_module"][1]
    second.target = "linear_0"  # both branches now call one module
    gm.recompile()
    assert batch_branches(gm, CPU) == 0


def test_batched_block_names_follow_the_first_branch():
    text = "branching(clone(b=4), [sequential(linear(d=16), norm, linear(d=32))]*4, concat(dim=2, b=4))"
    raw = lowered(text, COL)
    gm = optimize(copy.deepcopy(raw), device="cpu")
    assert gm.linear_0.weight.shape == (64, 8)  # four Linear(8, 16) side by side
    assert gm.norm_0_weight.shape == (4, 1, 16) and gm.linear_1_weight.shape == (4, 32, 16)
    assert set(gm.meta["einc"]["init"]) >= {"norm_0_weight", "linear_1_weight", "linear_1_bias"}
    assert torch.equal(gm.linear_1_weight[2], raw.linear_5.weight)  # branch 2's second linear


# ---------------------------------------------------------------- attention, merging, dedupe


def test_attention_head_becomes_sdpa_with_one_qkv_linear():
    raw = unoptimised("attention_head")
    gm = fused_like(raw, seed("attention_head"), SEEDS["attention_head"])
    assert _calls(gm, F.scaled_dot_product_attention) == 1
    assert [(m.in_features, m.out_features) for m in gm.modules() if isinstance(m, nn.Linear)] == [(512, 192)]
    assert_same_function(raw, gm, SEEDS["attention_head"])


def test_unscaled_attention_uses_scale_one():
    text = ("branching(clone(b=2), [sequential(branching(clone(b=2), [linear(d=16),"
            " routing(identity, linear(d=16), permute(o=(2, 1)))], matmul(scaled=false)), softmax),"
            " linear(d=16)], matmul(scaled=false))")
    raw = lowered(text, COL)
    gm = optimize(copy.deepcopy(raw), device="cpu")
    (sdpa,) = [n for n in gm.graph.nodes if n.target is F.scaled_dot_product_attention]
    assert sdpa.kwargs["scale"] == 1.0
    assert_same_function(raw, gm, COL)


_QK = ("branching(clone(b=2), [linear(d=16), routing(identity, linear(d=16), permute(o=(2, 1)))],"
       " matmul(scaled=true))")


@pytest.mark.parametrize("middle", [
    "relu",                                                     # no softmax between the products
    "softmax, branching(clone(b=2), [identity, relu], add)",   # the attention weights used twice
    "routing(permute(o=(2, 1)), softmax, permute(o=(2, 1)))",  # softmax over the queries
], ids=["relu", "reused", "queries"])
def test_what_is_not_attention_stays(middle):
    text = f"branching(clone(b=2), [sequential({_QK}, {middle}), linear(d=16)], matmul(scaled=false))"
    raw = lowered(text, COL)
    gm = _local(raw)
    assert fuse_attention(gm, CPU) == 0
    assert_same_function(raw, gm, COL)


def test_softmax_over_another_dim_is_not_attention():
    g = fx.Graph()
    q, k, v = (g.placeholder(n) for n in "qkv")
    s = g.call_function(torch.matmul, (q, g.call_method("transpose", (k, -2, -1))))
    p = g.call_function(torch.softmax, (s,), {"dim": 1})
    g.output(g.call_function(torch.matmul, (p, v)))
    for n, shape in zip((q, k, v), [(3, 5, 4), (3, 6, 4), (3, 6, 2)], strict=True):
        n.meta[STACKED] = (shape[0], shape[1:])
    gm = fx.GraphModule(nn.Module(), g)
    assert fuse_attention(gm, CPU) == 0


def test_linears_on_one_input_merge_and_split():
    text = "branching(clone(b=2), [linear(d=16), sequential(linear(d=32), relu)], concat(dim=2, b=2))"
    raw = lowered(text, COL)
    gm = _local(raw)
    assert merge_linears(gm, CPU) == 1
    assert (gm.linear_0.in_features, gm.linear_0.out_features) == (8, 48)
    assert_same_function(raw, gm, COL)
    round_trip(raw, gm)


def test_dedupe_computes_a_repeated_op_once():
    raw = lowered("branching(clone(b=2), [softmax, softmax], matmul(scaled=false))", (6, 6))
    gm = copy.deepcopy(raw)
    assert dedupe(gm, CPU) == 1 and _calls(gm, torch.softmax) == 1
    assert_same_function(raw, gm, (6, 6))


# ---------------------------------------------------------------- state dicts


def test_state_dicts_convert_both_ways():
    raw = unoptimised("resnet18")
    gm = einc.build(seed("resnet18"), SEEDS["resnet18"], device="cpu")
    assert set(gm.state_dict()) != set(raw.state_dict())
    gm.load_state_dict(pack_state_dict(raw.state_dict(), gm))
    round_trip(raw, gm)
    other = copy.deepcopy(raw)
    for p in other.parameters():
        p.data.normal_()
    other.load_state_dict(unpack_state_dict(gm.state_dict(), gm))  # strict
    assert_same_function(other, gm, SEEDS["resnet18"])


def test_a_wrong_state_dict_is_refused():
    from einc.errors import LoweringError

    gm = einc.build(seed("vit"), SEEDS["vit"], device="cpu")
    with pytest.raises(LoweringError, match='entry "linear_1.weight" has shape'):
        pack_state_dict(unoptimised("mixer").state_dict(), gm)


# ---------------------------------------------------------------- sampled networks


@pytest.mark.slow  # 45 sampled networks built and compared
@pytest.mark.parametrize("shape", [(3, 16, 16), (4, 12, 8), (8, 16)], ids=str)
def test_sampled_networks_with_equal_branches_are_exact(shape):
    """Networks with equal branches, sampled (small budget): optimised equals unoptimised."""
    assert check_sampled(shape, 15, first_seed=1000, budget=SMALL, equal_branches_only=True) >= 9
