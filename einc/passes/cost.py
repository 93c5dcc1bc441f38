"""When batching pays: a small cost model per device, apart from the (always exact) rewrites.

Horizontal fusion and linear merging are exact whatever they choose; this module only says which
of the exact forms is faster where the network will train. ``cost_model(device)`` picks one.

NOTE: [GEMM shapes] CPU matrix products are not monotonic in their shape (one thread, torch
2.13, measured in bench/bench_fusion.py's setting): one (M, K) @ (K, b*N) product beats b
(M, K) @ (K, N) ones by up to 1.5x while b*N stays within about a thousand and K is not tiny,
but loses up to 3x beyond (K = 4, b*N = 1024: 14 ms against 4.5 for M = 2048, forward and
backward); a batched product (bmm) of b large ones runs up to 1.5x slower than b separate
ones. Small products are dominated by per-op overhead, where fewer ops always win. A grouped
convolution of b groups beats b separate ones on CPU (chunk and concatenation included) up to
about 2^20 FLOPs per sample and group (0.2-0.95x the time), and loses up to 1.9x beyond
(measured: 3x3 kernels, 8-256 channels, 16x16 and 32x32 images, batch 8, forward and backward).
A patch embedding (a linear of im2col patches that do not overlap, stride > 1, read as a
sequence) runs faster on CPU as that linear of the patches reshaped than as a strided
convolution read as a sequence: 1-1.3x at 32 channels, 2-3x at 3 (einc.passes.conv_fusion;
overlapping windows are up to 3x faster as convolutions).

On CUDA every form is one kernel launch per op and launches dominate networks of this size, so
fewer, larger ops win: wide and batched products and grouped convolutions are always taken.
(Not measured here: no GPU was at hand; cuBLAS and cuDNN handle all three shapes natively.)
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CPU", "CUDA", "CostModel", "cost_model"]


@dataclass(frozen=True, slots=True)
class CostModel:
    """Thresholds for one device kind; FLOPs are per sample and per branch."""

    name: str
    small_flops: int  # a product this small costs its call overhead: batching it always pays
    narrow_width: int  # a wide product up to this many output columns always pays
    wide_min_k: int  # beyond narrow_width, a wide product pays for K at least this ...
    wide_max_width: int  # ... and at most this many output columns (K: the reduced dim)
    batched_large_gemms: bool  # b large products as one bmm/einsum
    grouped_conv_flops: int | None  # b convolutions as one grouped one up to this size; None: always
    patch_conv: bool  # a patch embedding as a strided convolution (else: a linear of reshaped patches)

    def small(self, flops: int) -> bool:
        return flops <= self.small_flops

    def wide_ok(self, k: int, width: int) -> bool:
        """One (M, k) @ (k, width) product is no slower than the narrower products it replaces."""
        return width <= self.narrow_width or (k >= self.wide_min_k and width <= self.wide_max_width)

    def batched_ok(self, flops: int) -> bool:
        """b (M, K) @ (K, N) products (``flops`` each) as one batched product."""
        return self.batched_large_gemms or self.small(flops)

    def grouped_conv_ok(self, flops: int) -> bool:
        """b convolutions of ``flops`` each, on b tensors, as one grouped convolution."""
        return self.grouped_conv_flops is None or flops <= self.grouped_conv_flops


CPU = CostModel("cpu", small_flops=1 << 18, narrow_width=128, wide_min_k=16, wide_max_width=1024,
                batched_large_gemms=False, grouped_conv_flops=1 << 20, patch_conv=False)
CUDA = CostModel("cuda", small_flops=1 << 62, narrow_width=1 << 62, wide_min_k=0, wide_max_width=1 << 62,
                 batched_large_gemms=True, grouped_conv_flops=None, patch_conv=True)


def cost_model(device: str | None = None) -> CostModel:
    """The model for ``device`` ("cpu", "cuda", "cuda:1", ...); None: cuda if available, else cpu."""
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    return CUDA if str(device).startswith("cuda") else CPU
