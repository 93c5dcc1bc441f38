"""The feature state that flows through a derivation: what shape rules read and write.

Per sample, batch excluded: Im features are (C, H, W), Col features are (S, D) (paper 3.5).
A Col feature made by ``im2col`` remembers its grid (H', W') so that a later ``col2im`` can
fold it back exactly (paper A.3); any operation that reorders or resizes the sequence axis
forgets the grid, and ``col2im`` is applicable only while ``H' * W' == S``.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

IM, COL = "Im", "Col"
MODES = (IM, COL)


@dataclass(frozen=True, slots=True)
class Feature:
    shape: tuple[int, ...]
    mode: str
    grid: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        assert self.mode in MODES and len(self.shape) == (3 if self.mode == IM else 2), self

    @property
    def numel(self) -> int:
        return prod(self.shape)

    def __str__(self) -> str:
        dims = "x".join(map(str, self.shape))
        return f"{self.mode}[{dims}]" + (f"@{self.grid[0]}x{self.grid[1]}" if self.grid else "")


Features = tuple[Feature, ...]
"""The tensors between two operations; more than one inside a branch (b = its length)."""


def feature_for(shape: tuple[int, ...]) -> Feature:
    """The network input: rank 3 is Im mode, rank 2 is Col mode."""
    if len(shape) == 3:
        return Feature(tuple(shape), IM)
    if len(shape) == 2:
        return Feature(tuple(shape), COL)
    raise ValueError(f"an input shape has 2 (S,D) or 3 (C,H,W) dimensions, not {len(shape)}")


def mode_of(features: Features) -> str | None:
    """The shared mode of the features, or None when branches disagree."""
    modes = {f.mode for f in features}
    return modes.pop() if len(modes) == 1 else None


# Stand-ins for the finite abstraction of a state (mode, branching factor): large and highly
# divisible (N = 2^6 3^2 5 7 11 13 = 2,882,880: every b up to 16 and every power of 2 up to 64
# divides it), so that every shape rule that only needs sizes big enough or divisible by a
# small factor (a stride-3 pool) accepts them unless the *mode* or *count* is wrong. An op whose
# rule needs more (H == W, say) gives its own ``Op.effect``.
_N = 2**6 * 3**2 * 5 * 7 * 11 * 13
_GENERIC = {IM: Feature((_N, _N, _N), IM), COL: Feature((_N * _N, _N * _N), COL, (_N, _N))}  # square: matmul


def representative(mode: str | None, b: int) -> Features:
    """Features standing for 'any state with this mode and branching factor'."""
    if mode is None:  # mixed modes across branches
        return (_GENERIC[IM],) + (_GENERIC[COL],) * (b - 1)
    return (_GENERIC[mode],) * b
