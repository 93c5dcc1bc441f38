"""Seed architectures, cached builds and the differential checks shared by the lowering, pass and
emission tests.

Builds are cached per session (one unoptimised GraphModule per seed); a test that rewrites a
module works on a deep copy, so the cached ones never change. ``check_sampled`` is the one
sampled-differential check: sampled networks, optimised and unoptimised, compute the same
function (float64; train mode and gradients; state dicts both ways; the emitted source).
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable
from functools import cache
from pathlib import Path

import torch
import torch.fx as fx

import einc
from einc.emit import emit, load_source
from einc.meta import BATCHED, INFO
from einc.ops import feature_for
from einc.passes import optimize, pack_state_dict, unpack_state_dict
from einc.sample import Budget, Sampler
from einc.tree import Expansion, Fork, walk
from einc.verify import assert_same_function, check_shapes

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

# Small inputs where the seed allows: the ViT and Mixer seeds have widths tied to 256 tokens
# (4x4 patches of 64x64); ResNet18 needs H, W divisible by 16 (16x16 ends at 1x1, which
# eval-mode BatchNorm takes).
SEEDS: dict[str, tuple[int, ...]] = {
    "resnet18": (3, 16, 16),
    "wrn16_4": (3, 16, 16),
    "vit": (3, 64, 64),
    "mixer": (3, 64, 64),
    "resnet_block": (64, 8, 8),
    "attention_head": (16, 512),
    "patch_embedding": (3, 16, 16),
}


@cache
def grammar() -> einc.Grammar:
    return einc.load("einspace")


def seed_text(name: str) -> str:
    return (EXAMPLES / f"{name}.arch").read_text().strip()


@cache
def seed(name: str) -> einc.Architecture:
    return grammar().parse(seed_text(name), SEEDS[name])


def lowered(text: str, shape: tuple[int, ...]) -> fx.GraphModule:
    """``text`` (einspace) lowered without passes."""
    return einc.build(grammar().parse(text, shape), shape, optimize=False)


@cache
def unoptimised(name: str) -> fx.GraphModule:
    """The seed lowered without passes (shared: never mutate it)."""
    torch.manual_seed(0)
    return einc.build(seed(name), SEEDS[name], optimize=False, check=False)  # tests check shapes


@cache
def optimised(name: str) -> fx.GraphModule:
    """A deep copy of the unoptimised build with every pass applied: same weights (shared too)."""
    return optimize(copy.deepcopy(unoptimised(name)), device="cpu")


def check(gm: fx.GraphModule, arch: einc.Architecture, shape: tuple[int, ...]) -> None:
    """``gm``'s real output shape is the one shape inference gives for ``arch`` (head from gm.meta)."""
    classes = gm.meta[INFO]["num_classes"]
    check_shapes(gm, shape, (classes,) if classes is not None else arch.infer(shape).output[0].shape)


def fused_like(raw: fx.GraphModule, arch: einc.Architecture, shape: tuple[int, ...],
               num_classes: int | None = None) -> fx.GraphModule:
    """A fresh optimised build (its own random weights, CPU cost model) loaded with ``raw``'s weights."""
    gm = einc.build(arch, shape, num_classes=num_classes, device="cpu")
    gm.load_state_dict(pack_state_dict(raw.state_dict(), gm))
    return gm


def round_trip(raw: fx.GraphModule, gm: fx.GraphModule) -> None:
    """``gm``'s state dict unpacks to exactly ``raw``'s, keys in order."""
    back = unpack_state_dict(gm.state_dict(), gm)
    want = raw.state_dict()
    assert list(back) == list(want)
    for k, v in want.items():
        assert torch.equal(back[k], v), k


def same_in_training(raw: fx.GraphModule, gm: fx.GraphModule, shape: tuple[int, ...], batch: int = 2) -> None:
    """Train mode (BatchNorm on batch statistics), float64: same output, same gradients."""
    raw, gm = copy.deepcopy(raw).double().train(), copy.deepcopy(gm).double().train()
    x = torch.randn(batch, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    outs = []
    for m in (raw, gm):
        y = m(x)
        if not y.requires_grad:  # no parameter on the way
            return
        (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).reshape(y.shape)).sum().backward()
        outs.append(y)
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-7, atol=1e-9)
    grads = unpack_state_dict({k: p.grad for k, p in gm.named_parameters() if p.grad is not None}, gm)
    # tolerance relative to the largest gradient: BatchNorm on a batch of 2 makes some of 1e4,
    # and a bias before a BatchNorm has gradient 0 up to rounding noise
    scale = max(p.grad.abs().max().item() for p in raw.parameters() if p.grad is not None)
    for k, p in raw.named_parameters():
        torch.testing.assert_close(grads[k], p.grad, rtol=1e-6, atol=1e-7 * scale + 1e-12, msg=_prefixed(k))


def _prefixed(key: str) -> Callable[[str], str]:
    return lambda message: f"{key}: {message}"


def same_when_emitted(gm: fx.GraphModule, shape: tuple[int, ...]) -> None:
    """The emitted source's class, holding ``gm``'s state dict (strict), computes what ``gm`` does."""
    net = load_source(emit(gm))["Net"]()
    net.load_state_dict(gm.state_dict())
    assert_same_function(gm, net, shape, double=False, rtol=1e-5, atol=1e-6)


def has_equal_branches(tree: Expansion) -> bool:
    return any(isinstance(f, Fork) and (f.repeated or len(set(f.children)) == 1) for _, f in walk(tree))


def check_sampled(shape: tuple[int, ...], count: int, first_seed: int = 0, budget: Budget | None = None,
                  equal_branches_only: bool = False, every: int = 5) -> int:
    """The sampled-differential check: ``count`` sampled networks, each built unoptimised and
    optimised (weights packed across), compute the same function.

    Each build checks its real output shape against shape inference; the two agree in float64
    on random input, outputs finite, and the state dict unpacks back exactly. Every ``every``-th
    network is also compared in train mode with gradients, and its emitted source against the
    module. Every third network has a head. Returns how many optimised networks hold a batched
    (horizontally fused) block.
    """
    table = grammar().table
    sampler = Sampler(table, shape, budget) if budget is not None else Sampler(table, shape)
    mode = feature_for(shape).mode
    done = batched = i = 0
    while done < count:
        tree = sampler.sample(random.Random(first_seed + i))
        i += 1
        if equal_branches_only and not has_equal_branches(tree):
            continue
        arch = grammar().architecture(tree, mode)
        classes = 3 if i % 3 == 0 else None
        torch.manual_seed(i)
        raw = einc.build(arch, shape, num_classes=classes, optimize=False)
        gm = fused_like(raw, arch, shape, num_classes=classes)
        assert_same_function(raw, gm, shape, rtol=1e-6, atol=1e-7)
        with torch.no_grad():
            assert torch.isfinite(gm.eval()(torch.randn(2, *shape))).all(), arch.text
        round_trip(raw, gm)
        if every and done % every == 0:
            same_in_training(raw, gm, shape)
            same_when_emitted(gm, shape)
        batched += any(n.meta.get(BATCHED) for n in gm.graph.nodes)
        done += 1
    return batched
