"""Seed architectures and cached builds shared by the lowering, pass and emission tests.

Builds are cached per session (one unoptimised GraphModule per seed); a test that rewrites a
module works on a deep copy, so the cached ones never change.
"""

from __future__ import annotations

import copy
from functools import lru_cache
from pathlib import Path

import pytest

import einc

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


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Run torch on one thread in these modules, then restore the setting.

    The tests run many small forward passes; with a second thread, a busy neighbour process on
    a 2-core machine makes OpenMP's spin-waits cost up to 100x (measured), and one thread
    loses little on work this small. Import it into a test module to use it.
    """
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@lru_cache(maxsize=None)
def grammar() -> einc.Grammar:
    return einc.load("einspace")


def seed_text(name: str) -> str:
    return (EXAMPLES / f"{name}.arch").read_text().strip()


@lru_cache(maxsize=None)
def seed(name: str) -> einc.Architecture:
    return grammar().parse(seed_text(name), SEEDS[name])


@lru_cache(maxsize=None)
def unoptimised(name: str):
    """The seed lowered without passes (shared: never mutate it)."""
    import torch

    torch.manual_seed(0)
    return einc.build(seed(name), SEEDS[name], optimize=False, check=False)  # tests check shapes


@lru_cache(maxsize=None)
def optimised(name: str):
    """A deep copy of the unoptimised build with every pass applied: same weights (shared too)."""
    from einc.passes import optimize

    return optimize(copy.deepcopy(unoptimised(name)))
