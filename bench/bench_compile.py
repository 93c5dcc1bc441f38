"""How fast einc compiles, and how fast what it compiles runs.

    python bench/bench_compile.py                  # compile times for every seed, scaling, ResNet18 ratio
    python bench/bench_compile.py --only-scaling   # parse/infer/build at 2,000 and 8,000 ops
    python bench/bench_compile.py --models resnet18,vit --reps 7

1. For each seed in examples/: median milliseconds to parse the string (parse cache cleared
   each time), to infer shapes, and to build the optimised GraphModule with a head (without
   and with the build's shape check, a batch-2 forward pass).
2. Scaling: parse, infer, build without passes and build with passes (no shape check: the
   compile alone) of a flat chain ``sequential(relu, relu, ...)`` of 2,000 and 8,000 ops,
   median of 3 runs each in CPU seconds of this process (on a shared machine wall time counts
   the neighbours too), with the exponent k of time ~ ops^k fitted to the two sizes, against
   issue 21's goals at 8,000 ops (parse <= 0.3 s, build with passes <= 2 s) and its figures
   from before (the idle CPU of then: k was 1.5 to 1.7); then the parse of a chain of mixed ops
   (relu, linear(d=64), norm: trying each variant of linear by raising errors was quadratic).
3. Forward + backward time of einc's model against the hand-written PyTorch one of
   bench/handwritten.py (same parameter count), batch 16, input (3, 64, 64), one thread, both
   in train mode, runs interleaved (einc, hand, einc, hand, ...) so drift hits both alike;
   median of ``--reps`` runs each after warm-up. The goal for ResNet18 is a ratio <= 1.1.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import einc  # noqa: E402
from einc.derivation import _parse_cached  # noqa: E402  (cache cleared: real parse times)
from einc.derivation import parse as parse_arch  # noqa: E402
from einc.ops import feature_for  # noqa: E402

from handwritten import MODELS  # noqa: E402

SEEDS = {
    "resnet18": (3, 64, 64), "wrn16_4": (3, 64, 64), "vit": (3, 64, 64), "mixer": (3, 64, 64),
    "resnet_block": (64, 32, 32), "attention_head": (256, 512), "patch_embedding": (3, 64, 64),
}
CLASSES = 10


def _median_ms(fn, reps: int, clock=time.perf_counter, setup=None) -> float:
    times = []
    for _ in range(reps):
        if setup is not None:
            setup()  # not timed
        t = clock()
        fn()
        times.append(clock() - t)
    return 1000 * statistics.median(times)


def compile_times(reps: int) -> list[tuple[str, float, float, float, float]]:
    g = einc.load("einspace")
    return [_compile_times(g, name, shape, reps) for name, shape in SEEDS.items()]


def _compile_times(g: einc.Grammar, name: str, shape: tuple[int, ...],
                   reps: int) -> tuple[str, float, float, float, float]:
    text = (ROOT / "examples" / f"{name}.arch").read_text().strip()
    mode = feature_for(shape).mode

    def parse() -> einc.Expansion:
        _parse_cached.cache_clear()
        return parse_arch(text, g.table, mode)

    arch = g.architecture(parse(), mode)
    classes = CLASSES if len(shape) == 3 else None
    return (name,
            _median_ms(parse, reps),
            _median_ms(lambda: arch.infer(shape), reps),
            _median_ms(lambda: einc.build(arch, shape, num_classes=classes, check=False), reps),
            _median_ms(lambda: einc.build(arch, shape, num_classes=classes), reps))


STAGES = ("parse", "infer", "build", "build+passes")
CHAIN = (2000, 8000)
GOALS = {"parse": 0.3, "build+passes": 2.0}  # seconds at 8,000 ops (issue 21)
BEFORE = {2000: (0.20, 0.08, 3.05, 1.58), 8000: (1.87, 0.79, 7.51, 12.71)}  # issue 21, before its part 5


def chain_times(n: int, reps: int = 3) -> tuple[float, ...]:
    """Median seconds of each of STAGES on a flat chain of ``n`` relus at (3, 32, 32)."""
    g = einc.load("einspace")
    shape = (3, 32, 32)
    text = "sequential(" + ", ".join(["relu"] * n) + ")"

    arch = g.parse(text)
    stages = (lambda: g.parse(text), lambda: arch.infer(shape),
              lambda: einc.build(arch, shape, optimize=False, check=False),
              lambda: einc.build(arch, shape, check=False))
    return tuple(_median_ms(f, reps, time.process_time, _parse_cached.cache_clear) / 1000 for f in stages)


def scaling() -> None:
    einc.build(einc.load("einspace").parse("sequential(relu, norm)"), (3, 32, 32))  # imports, first calls
    times = {n: chain_times(n) for n in CHAIN}
    print("\nscaling: a flat chain of relus at (3, 32, 32), median CPU seconds of this process in 3 runs; "
          "k: time ~ ops^k")
    print(f"{'ops':>14s} " + " ".join(f"{s:>12s}" for s in STAGES))
    for n in CHAIN:
        print(f"{n:14,d} " + " ".join(f"{t:12.3f}" for t in times[n]))
    a, b = CHAIN
    k = [math.log(tb / ta) / math.log(b / a) for ta, tb in zip(times[a], times[b], strict=True)]
    print(f"{'k':>14s} " + " ".join(f"{x:12.2f}" for x in k))
    print(f"{'goal at ' + f'{b:,}':>14s} " + " ".join(
        f"{'<= ' + str(GOALS[s]) + (' met' if times[b][i] <= GOALS[s] else ' MISSED'):>12s}" if s in GOALS
        else f"{'':>12s}" for i, s in enumerate(STAGES)))
    for n in CHAIN:
        print(f"{'before, ' + f'{n:,}':>14s} " + " ".join(f"{t:12.2f}" for t in BEFORE[n]))
    kb = [math.log(tb / ta) / math.log(b / a) for ta, tb in zip(BEFORE[a], BEFORE[b], strict=True)]
    print(f"{'k before':>14s} " + " ".join(f"{x:12.2f}" for x in kb))
    mixed = [mixed_parse(n) for n in CHAIN]
    print(f"parse of a chain of relu, linear(d=64), norm: {mixed[0]:.3f} s at {a:,} ops, {mixed[1]:.3f} s at "
          f"{b:,}, k {math.log(mixed[1] / mixed[0]) / math.log(b / a):.2f}")


def mixed_parse(n: int, reps: int = 3) -> float:
    """Median CPU seconds to parse a chain of ``n`` ops of three kinds, one of them with variants
    (each linear(d=...) is matched against the grammar's eight)."""
    g = einc.load("einspace")
    text = "sequential(" + ", ".join((["relu", "linear(d=64)", "norm"] * n)[:n]) + ")"

    return _median_ms(lambda: g.parse(text), reps, time.process_time, _parse_cached.cache_clear) / 1000


def _step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    t = time.perf_counter()
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    return time.perf_counter() - t


def train_step_ratio(name: str, reps: int, batch: int = 16) -> tuple[float, float, int, int]:
    """(einc ms, hand-written ms, einc params, hand params): medians of interleaved runs."""
    torch.manual_seed(0)
    shape = (3, 64, 64)
    arch = einc.load("einspace").parse((ROOT / "examples" / f"{name}.arch").read_text().strip(), shape)
    ours = einc.build(arch, shape, num_classes=CLASSES).train()
    hand = MODELS[name](num_classes=CLASSES, in_channels=3, image_size=64).train()
    x = torch.randn(batch, *shape)
    y = torch.randint(0, CLASSES, (batch,))
    for _ in range(2):  # warm-up: allocator, kernels
        _step(ours, x, y)
        _step(hand, x, y)
    a, b = [], []
    for _ in range(reps):
        a.append(_step(ours, x, y))
        b.append(_step(hand, x, y))
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    return 1000 * statistics.median(a), 1000 * statistics.median(b), count(ours), count(hand)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=5, help="timed runs per measurement (median; >= 5)")
    ap.add_argument("--models", default="resnet18", help="comma-separated: " + ",".join(MODELS))
    ap.add_argument("--skip-compile", action="store_true", help="only the forward+backward comparison")
    ap.add_argument("--only-scaling", action="store_true", help="only the 2,000/8,000-op scaling")
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"einc {einc.__version__}, torch {torch.__version__}, 1 thread")
    if args.only_scaling:
        scaling()
        return
    if not args.skip_compile:
        print("\ncompile times (median ms)")
        print(f"{'seed':16s} {'parse':>8s} {'infer':>8s} {'build':>8s} {'+check':>8s}")
        for name, p, i, b, c in compile_times(max(args.reps, 5)):
            print(f"{name:16s} {p:8.2f} {i:8.2f} {b:8.1f} {c:8.1f}")
        scaling()
    print(f"\nforward+backward, batch 16, input (3, 64, 64), median of {args.reps} interleaved runs")
    print(f"{'model':10s} {'einc ms':>9s} {'hand ms':>9s} {'ratio':>6s} {'params':>12s}")
    for name in args.models.split(","):
        ours, hand, n_ours, n_hand = train_step_ratio(name, args.reps)
        same = "" if n_ours == n_hand else f" (hand-written: {n_hand:,})"
        print(f"{name:10s} {ours:9.1f} {hand:9.1f} {ours / hand:6.3f} {n_ours:12,d}{same}")


if __name__ == "__main__":
    main()
