"""How fast einc's fused networks train: against hand-written PyTorch, and against unfused einc.

    python bench/bench_fusion.py                        # all three parts, defaults below (~20-30 min)
    python bench/bench_fusion.py --samples 0 --im2col-samples 0   # the four seeds only
    python bench/bench_fusion.py --models "" --samples 0          # part 3 only
    python bench/bench_fusion.py --quick                # a smoke run of every part (~2 min)

1. Seeds: forward + backward time (zero_grad, cross-entropy, backward) of ``einc.build``'s
   network (optimize=True: every pass of einc.passes) over the hand-written one of
   bench/handwritten.py (same parameter count), batch 16, input (3, 64, 64), one thread, CPU,
   train mode, runs interleaved (einc, hand, einc, hand, ...) so drift hits both alike; median
   of ``--reps`` runs each after warm-up. Goals: ResNet18 and WRN-16-4 <= 1.02, ViT and
   MLP-Mixer <= 1.05.
2. Sampled networks: ``--samples`` architectures drawn from einspace (einc.testing.SMALL
   budget, seeds 0, 1, ...) that have a repeated branch block; for each, three builds holding
   the same weights (einc.passes.pack_state_dict): unoptimised (optimize=False), the local
   passes only (einc.passes.LOCAL), and every pass (optimize=True); batch 8, input (3, 32, 32), runs
   interleaved, median of ``--sample-reps`` runs. Prints median and quartiles of the
   speed-ups (time of the slower form / time of the fused one; > 1: fused is faster): over
   the unoptimised build (what optimize=True buys) and over passes only (what fusion adds).
3. im2col in sampled networks: ``--im2col-samples`` architectures drawn from einspace at
   (3, 32, 32) within 2M parameters and 3e8 FLOPs (seeds 0, 1, ...; issue 21's setting). Prints
   the share that still holds an ``F.unfold`` after optimisation (goal <= 10%: only im2cols used
   in Col mode, whose patches are not read by a linear) beside the share holding one as
   lowered, the unfold and Conv2d counts, and the (k, s, p) of the unfolds left. Then the first
   ``--im2col-timed`` of them holding an im2col are timed as in 2 (batch 8, median of
   ``--sample-reps`` interleaved runs) in three builds holding the same weights: unoptimised,
   every pass but the im2col rewrites (fuse_convolutions, reshape_patches), and every pass;
   quartiles of the speed-ups and the ratios of the summed times. First, the README search's
   best block, ``routing(im2col(k=3, s=1, p=1), sequential(linear(d=64), linear(d=256)),
   col2im)`` on (32, 32, 32), batch 32, unoptimised against fused (a 3x3 and a 1x1 convolution).
"""

from __future__ import annotations

import argparse
import copy
import random
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import einc  # noqa: E402
from einc.ops import feature_for  # noqa: E402
from einc.passes import LOCAL, PIPELINE, fuse_convolutions, optimize, pack_state_dict, reshape_patches  # noqa: E402
from einc.sample import Sampler  # noqa: E402
from einc.testing import SMALL  # noqa: E402
from einc.tree import Fork, walk  # noqa: E402

from handwritten import MODELS  # noqa: E402

CLASSES = 10
GOALS = {"resnet18": 1.02, "wrn16_4": 1.02, "vit": 1.05, "mixer": 1.05}


def _step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    t = time.perf_counter()
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    return time.perf_counter() - t


def interleaved(a: torch.nn.Module, b: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, reps: int,
                warmup: int = 2) -> tuple[float, float]:
    """Median seconds of a and of b, run alternately."""
    ta, tb = interleaved_all([a, b], x, y, reps, warmup)
    return ta, tb


def seeds(names: list[str], reps: int, batch: int = 16) -> None:
    shape = (3, 64, 64)
    g = einc.load("einspace")
    print(f"\n1. einc (optimize=True) vs hand-written: forward+backward, batch {batch}, input {shape}, "
          f"median of {reps} interleaved runs")
    print(f"{'model':10s} {'einc ms':>9s} {'hand ms':>9s} {'ratio':>6s} {'goal':>6s} {'params':>12s}")
    for name in names:
        torch.manual_seed(0)
        arch = g.parse((ROOT / "examples" / f"{name}.arch").read_text().strip(), shape)
        ours = einc.build(arch, shape, num_classes=CLASSES).train()
        hand = MODELS[name](num_classes=CLASSES, in_channels=3, image_size=64).train()
        x = torch.randn(batch, *shape)
        y = torch.randint(0, CLASSES, (batch,))
        a, b = interleaved(ours, hand, x, y, reps)
        n_ours = sum(p.numel() for p in ours.parameters())
        n_hand = sum(p.numel() for p in hand.parameters())
        same = "" if n_ours == n_hand else f" (hand-written: {n_hand:,})"
        ratio = a / b
        mark = "ok" if ratio <= GOALS[name] else "MISSED"
        print(f"{name:10s} {1000 * a:9.1f} {1000 * b:9.1f} {ratio:6.3f} {GOALS[name]:6.2f} "
              f"{n_ours:12,d}{same}  {mark}", flush=True)


def _repeated(tree) -> bool:
    return any(isinstance(f, Fork) and f.repeated for _, f in walk(tree))


def interleaved_all(models: list[torch.nn.Module], x: torch.Tensor, y: torch.Tensor, reps: int,
                    warmup: int = 1) -> list[float]:
    """Median seconds of each model, run in turn."""
    for _ in range(warmup):
        for m in models:
            _step(m, x, y)
    times: list[list[float]] = [[] for _ in models]
    for _ in range(reps):
        for m, t in zip(models, times, strict=True):
            t.append(_step(m, x, y))
    return [statistics.median(t) for t in times]


def _quartiles(values: list[float]) -> str:
    q1, med, q3 = statistics.quantiles(values, n=4)
    return (f"median {med:.3f}, quartiles {q1:.3f} / {q3:.3f}, min {min(values):.3f}, max {max(values):.3f}, "
            f"fused faster in {sum(v > 1 for v in values)}/{len(values)}")


def sampled(count: int, reps: int, batch: int = 8, shape: tuple[int, ...] = (3, 32, 32)) -> None:
    g = einc.load("einspace")
    sampler = Sampler(g.table, shape, SMALL)
    mode = feature_for(shape).mode
    print(f"\n2. fused einc vs unfused on {count} sampled networks with a repeated branch block: "
          f"forward+backward, batch {batch}, input {shape}, median of {reps} interleaved runs", flush=True)
    ms: list[tuple[float, float, float]] = []  # unoptimised, local passes only, fused
    seed = 0
    start = time.perf_counter()
    while len(ms) < count:
        tree = sampler.sample(random.Random(seed))
        seed += 1
        if not _repeated(tree):
            continue
        arch = g.architecture(tree, mode)
        torch.manual_seed(seed)
        raw = einc.build(arch, shape, num_classes=CLASSES, optimize=False).train()
        passes = optimize(copy.deepcopy(raw), passes=LOCAL)
        fused = einc.build(arch, shape, num_classes=CLASSES, check=False).train()
        fused.load_state_dict(pack_state_dict(raw.state_dict(), fused))
        x = torch.randn(batch, *shape)
        y = torch.randint(0, CLASSES, (batch,))
        ms.append(tuple(1000 * t for t in interleaved_all([raw, passes, fused], x, y, reps)))
        if len(ms) % 50 == 0:
            print(f"  {len(ms)} networks, {time.perf_counter() - start:.0f} s", flush=True)
    print(f"speed-up over unoptimised (optimize=False): {_quartiles([r / f for r, _, f in ms])}")
    print(f"speed-up over local passes only (fusion's part):  {_quartiles([p / f for _, p, f in ms])}")
    total = [sum(col) / 1000 for col in zip(*ms, strict=True)]
    medians = [statistics.median(col) for col in zip(*ms, strict=True)]
    print(f"median step: unoptimised {medians[0]:.2f} ms, passes only {medians[1]:.2f} ms, fused "
          f"{medians[2]:.2f} ms; sum over the networks: {total[0]:.2f} s, {total[1]:.2f} s, {total[2]:.2f} s")


def im2col(count: int, timed: int, reps: int, batch: int = 8, shape: tuple[int, ...] = (3, 32, 32)) -> None:
    g = einc.load("einspace")
    sampler = Sampler(g.table, shape, einc.Budget(max_params=2_000_000, max_flops=300_000_000))
    print(f"\n3. im2col in {count} einspace samples, input {shape}, 2M params, 3e8 FLOPs", flush=True)
    block, at = "routing(im2col(k=3, s=1, p=1), sequential(linear(d=64), linear(d=256)), col2im)", (32, 32, 32)
    torch.manual_seed(0)
    raw = einc.build(g.parse(block, at), at, num_classes=CLASSES, optimize=False).train()
    fused = einc.build(g.parse(block, at), at, num_classes=CLASSES, device="cpu").train()
    fused.load_state_dict(pack_state_dict(raw.state_dict(), fused))
    a, b = interleaved_all([raw, fused], torch.randn(32, *at), torch.randint(0, CLASSES, (32,)), max(reps, 5))
    print(f"{block} on {at}, batch 32: unoptimised {1000 * a:.1f} ms, fused {1000 * b:.1f} ms, ratio {a / b:.2f}")
    lowered = held = in_text = unfolds_raw = unfolds = convs = 0
    left: Counter[tuple[int, int, int]] = Counter()
    ms: list[tuple[float, float, float]] = []  # unoptimised, fused but for the im2col rewrites, fused
    others = [p for p in PIPELINE if p not in (fuse_convolutions, reshape_patches)]
    start = time.perf_counter()
    for seed in range(count):
        arch = g.architecture(sampler.sample(random.Random(seed)), "Im")
        in_text += arch.text.count("im2col(")
        torch.manual_seed(seed)
        raw = einc.build(arch, shape, num_classes=CLASSES, optimize=False).train()
        fused = einc.build(arch, shape, num_classes=CLASSES, check=False, device="cpu").train()
        before, after = _unfolds(raw), _unfolds(fused)
        lowered += bool(before)
        held += bool(after)
        unfolds_raw += len(before)
        unfolds += len(after)
        convs += sum(isinstance(m, torch.nn.Conv2d) for m in fused.modules())
        left.update((n.kwargs["kernel_size"], n.kwargs["stride"], n.kwargs["padding"]) for n in after)
        if before and len(ms) < timed:
            fused.load_state_dict(pack_state_dict(raw.state_dict(), fused))
            rest = optimize(copy.deepcopy(raw), device="cpu", passes=others)
            x = torch.randn(batch, *shape)
            y = torch.randint(0, CLASSES, (batch,))
            a, b, c = interleaved_all([raw, rest, fused], x, y, reps)
            ms.append((1000 * a, 1000 * b, 1000 * c))
        if (seed + 1) % 50 == 0:
            print(f"  {seed + 1} networks, {time.perf_counter() - start:.0f} s", flush=True)
    mark = "ok" if held <= 0.10 * count else "MISSED"
    print(f"holding an F.unfold: optimised {held}/{count} ({100 * held / count:.1f}%, goal <= 10%: {mark}), "
          f"as lowered {lowered}/{count} ({100 * lowered / count:.1f}%)")
    print(f"im2col in the strings: {in_text}; F.unfold calls: {unfolds_raw} lowered, {unfolds} optimised; "
          f"Conv2d made: {convs}")
    if left:
        print("unfolds left by (k, s, p): " + ", ".join(f"{k}: {n}" for k, n in sorted(left.items())))
    if len(ms) >= 2:
        print(f"forward+backward of {len(ms)} of them holding an im2col, batch {batch}, median of {reps} "
              f"interleaved runs")
        print(f"speed-up over unoptimised (optimize=False): {_quartiles([r / f for r, _, f in ms])}")
        print(f"speed-up over every other pass (the im2col rewrites' part): {_quartiles([o / f for _, o, f in ms])}")
        raw_s, rest_s, fused_s = (sum(col) / 1000 for col in zip(*ms, strict=True))
        print(f"sum over the networks: unoptimised {raw_s:.2f} s, without the im2col rewrites {rest_s:.2f} s, "
              f"fused {fused_s:.2f} s; ratios {raw_s / fused_s:.2f} and {rest_s / fused_s:.2f}")


def _unfolds(gm: torch.fx.GraphModule) -> list[torch.fx.Node]:
    return [n for n in gm.graph.nodes if n.op == "call_function" and n.target is F.unfold]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="resnet18,wrn16_4,vit,mixer",
                    help="comma-separated: " + ",".join(MODELS))
    ap.add_argument("--reps", type=int, default=7, help="timed runs per seed measurement (median; >= 5)")
    ap.add_argument("--samples", type=int, default=200, help="sampled networks (0: skip)")
    ap.add_argument("--sample-reps", type=int, default=5, help="timed runs per sampled network (median)")
    ap.add_argument("--im2col-samples", type=int, default=300,
                    help="einspace samples checked for a remaining F.unfold (part 3; 0: skip)")
    ap.add_argument("--im2col-timed", type=int, default=40,
                    help="of part 3's samples holding an im2col, how many to time (fused vs unfused)")
    ap.add_argument("--quick", action="store_true", help="a smoke run: few networks, few runs, ViT only")
    args = ap.parse_args()
    if args.quick:
        args.models, args.reps, args.samples, args.sample_reps = "vit", 5, 4, 3
        args.im2col_samples, args.im2col_timed = 20, 4
    torch.set_num_threads(1)
    print(f"einc {einc.__version__}, torch {torch.__version__}, 1 thread, CPU")
    if args.models:
        seeds(args.models.split(","), max(args.reps, 5))
    if args.samples:
        sampled(args.samples, args.sample_reps)
    if args.im2col_samples:
        im2col(args.im2col_samples, args.im2col_timed, args.sample_reps)


if __name__ == "__main__":
    main()
