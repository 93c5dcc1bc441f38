"""The settings of one training, and its error: plain data, importable without torch.

They live apart from runtime/train.py so that the search's configuration (runtime/search.py)
and the command line take their defaults from here without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from einc.errors import EinError


class TrainError(EinError):
    """A candidate could not be trained; the search records it as a failed evaluation."""


@dataclass
class TrainConfig:
    """Defaults are the Unseen-NAS search settings of the paper's Table 4 (64 epochs to retrain).

    ``amp``: bf16 autocast (float16 + loss scaling where bf16 is missing) on CUDA; None = when the
    candidate has at least ``AMP_MIN_FLOPS`` per sample. ``graphs``: replay the training step from
    a CUDA graph; None = on CUDA. Both are ignored on a CPU (see ``settings_note``).
    """

    epochs: int = 8
    lr: float = 0.04
    weight_decay: float = 3e-4
    momentum: float = 0.9
    batch_size: int = 256
    amp: bool | None = None
    graphs: bool | None = None
    time_limit: float | None = None  # seconds for the whole call, data transfer included
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or not self.lr > 0:
            raise TrainError(f"bad training settings: epochs={self.epochs}, batch_size={self.batch_size}, "
                             f"lr={self.lr}; each must be positive")
        if self.time_limit is not None and not self.time_limit > 0:
            raise TrainError(f"bad training settings: time_limit={self.time_limit}; it must be positive")
        for name in ("amp", "graphs"):
            if getattr(self, name) not in (None, True, False):
                raise TrainError(f"bad training settings: {name}={getattr(self, name)!r}; "
                                 "it must be true, false or null (auto)")
