"""Checks that a lowered or rewritten module is what it should be.

NOTE: [Verification] every transform is checked the same ways: ``graph.lint()``, the real output
shape against the statically inferred one (``check_shapes``: einc.build runs it), and, in
tests, equal outputs on one random input against the untransformed module
(``assert_same_function``).
"""

from __future__ import annotations

import copy

import torch
import torch.fx as fx
import torch.nn as nn

from .errors import LoweringError

__all__ = ["assert_same_function", "check_shapes", "lint"]


def lint(gm: fx.GraphModule) -> None:
    """``gm.graph.lint()``, its failure (a lowering or pass bug) as a ``LoweringError``."""
    try:
        gm.graph.lint()
    except Exception as e:  # keep the printed graph in the chain
        raise LoweringError(f"the lowered graph is malformed: {e}") from e


def check_shapes(gm: fx.GraphModule, input_shape: tuple[int, ...], expected: tuple[int, ...],
                 batch: int = 2) -> None:
    """``gm`` maps a random batch of ``input_shape`` to one of per-sample shape ``expected``.

    ``expected`` is the inferred output (einc.lower records it, head included, as
    ``gm.meta["einc"]["output_shape"]``). Runs in eval mode without grad (BatchNorm statistics
    stay untouched) on a private RNG, so the caller's random stream and the module's state are
    as before. Raises ``LoweringError`` on a failure or a mismatch.
    """
    x = torch.randn(batch, *input_shape, generator=torch.Generator().manual_seed(0))
    was_training = gm.training
    gm.eval()
    try:
        with torch.no_grad():
            y = gm(x)
    except Exception as e:  # a wrong lowering; the graph and its node are in the chain
        raise LoweringError(f"the lowered network fails on a batch of {batch}: "
                            f"{type(e).__name__}: {e}") from e
    finally:
        gm.train(was_training)
    want = (batch, *expected)
    if tuple(y.shape) != want:
        raise LoweringError(f"the lowered network's output has shape {tuple(y.shape)}; "
                            f"shape inference says {want}")


def assert_same_function(a: nn.Module, b: nn.Module, input_shape: tuple[int, ...], batch: int = 2,
                         seed: int = 0, double: bool = True, rtol: float = 1e-7, atol: float = 1e-9) -> None:
    """``a`` and ``b`` give the same output on the same random input (eval mode).

    With ``double`` both run on float64 copies, so an exact rewrite (a convolution for
    unfold + matmul) differs only by rounding far below ``rtol``; the modules themselves are
    left as they were.
    """
    x = torch.randn(batch, *input_shape, generator=torch.Generator().manual_seed(seed))
    outs = []
    for module in (a, b):
        m = copy.deepcopy(module).double() if double else module
        was_training = m.training
        m.eval()
        with torch.no_grad():
            outs.append(m(x.double() if double else x))
        m.train(was_training)
    torch.testing.assert_close(outs[0], outs[1], rtol=rtol, atol=atol)
