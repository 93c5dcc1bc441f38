"""Zero-cost proxy scores of derivation trees in the search's own process (einc.proxies on one
minibatch): the warm-up ranks samples with them (runtime/warmup.py) and the prefilter's surrogate
uses them as a feature (runtime/prefilter.py).

A search must recompute them to the bit when it resumes, so every network is built after
``torch.manual_seed(seed)`` and scored on the CPU with one torch thread (the thread count changes
float rounding), on the first ``batch`` training samples. A network that does not build or run,
or a proxy that cannot judge it, scores NaN.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from einc.tree import Expansion


def scorer(proxy: str, grammar: Any, data: Any, seed: int, batch: int) -> Callable[[Expansion], float]:
    """``proxy``'s value of a tree of ``grammar``, for the task of ``data`` (a runtime.data.Dataset)."""
    import torch

    from einc.proxies import score

    n = min(batch, len(data.train_x))
    x = torch.as_tensor(data.train_x[:n], dtype=torch.float32)
    y = torch.as_tensor(data.train_y[:n], dtype=torch.int64 if data.train_y.dtype.kind in "iu" else torch.float32)

    def value(tree: Expansion) -> float:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            v = score(grammar.architecture(tree), (x, y), [proxy], loss=data.task.loss,
                      output_shape=data.output_shape, seed=seed)[proxy].value
        except Exception:  # any network of a grammar may meet any torch error here: no value, as a failed proxy
            v = math.nan
        finally:
            torch.set_num_threads(threads)
        return v if math.isfinite(v) else math.nan  # -inf (NASWOT's singular kernel) included

    return value
