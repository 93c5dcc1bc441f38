"""ONNX export of a compiled network, checked against torch with onnxruntime.

    >>> gm = einc.build(arch, input_shape=(3, 64, 64), num_classes=10)
    >>> export_onnx(gm, (3, 64, 64), "model.onnx")          # opset 18, batch axis dynamic
    >>> compare(gm, "model.onnx", (3, 64, 64)).max_rel         # a batch of 3: not the traced 2
    2.1e-07

The exporter is torch's own (``torch.onnx.export(..., dynamo=True)``, which needs onnxscript);
the extra ``einc[onnx]`` installs onnx, onnxscript and onnxruntime. Nothing here is imported
by ``import einc``. An operation without an ONNX conversion ends as one ``OnnxError`` line
naming the einc operation (when the graph says which) and the ATen operator it lowers to.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import EinError, format_path
from .meta import PATH

if TYPE_CHECKING:
    import torch.fx

    from .api import Architecture, Grammar

OPSET = 18
EXTRA = "ONNX export needs the onnx extra: pip install 'einc[onnx]' (onnx, onnxscript, onnxruntime)"


class OnnxError(EinError):
    """The network cannot be exported, or its export does not run."""


@dataclass(frozen=True)
class Agreement:
    """onnxruntime against torch on one random batch.

    ``max_rel`` is the largest absolute difference over the largest absolute torch output
    (relative to the output's scale, so near-zero elements do not blow it up).
    """

    batch: int
    max_abs: float
    max_rel: float
    shape: tuple[int, ...]


def _require():
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        raise OnnxError(EXTRA) from None


@contextlib.contextmanager
def _quiet():
    """torch.onnx reports its progress on stdout and logs warnings; keep the CLI's output clean."""
    log = logging.getLogger("torch.onnx")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        log.setLevel(level)


def export_onnx(gm: torch.fx.GraphModule, input_shape: Sequence[int], path: str | Path, opset: int = OPSET,
                arch: Architecture | None = None) -> Path:
    """Write ``gm`` (per-sample ``input_shape``, any batch size) to ``path`` as ONNX.

    ``arch``, when given, lets an unsupported operator be reported by its einc operation.
    """
    _require()
    import torch

    if opset < 17:
        raise OnnxError(f"opset {opset}: error: einc exports opset 17 or newer")
    path = Path(path)
    if not path.parent.is_dir():  # before the export, which takes seconds
        raise OnnxError(f"{path}: error: cannot write: no folder {path.parent}")
    gm = _onnx_ready(gm.eval())
    x = torch.randn(2, *input_shape)
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    try:
        with _quiet(), torch.no_grad():
            program = torch.onnx.export(gm, (x,), None, dynamo=True, opset_version=opset, input_names=["x"],
                                        output_names=["y"], dynamic_shapes=({0: batch},), optimize=True,
                                        verbose=False)
    except Exception as e:  # the exporter's failures are many classes; each is reported in one line
        raise OnnxError(f"{path}: error: cannot export to ONNX: {_explain(e, gm, arch)}") from None
    assert program is not None  # dynamo=True always returns the program; the stubs allow None
    try:
        with _quiet():
            program.save(str(path))
    except OSError as e:
        raise OnnxError(f"{path}: error: cannot write: {e.strerror or type(e).__name__}") from None
    return path


def compare(gm: torch.fx.GraphModule, path: str | Path, input_shape: Sequence[int], batch: int = 3,
            seed: int = 0) -> Agreement:
    """Run the ONNX file with onnxruntime and ``gm`` with torch on one random batch; the differences."""
    _require()
    import numpy as np
    import onnxruntime as ort
    import torch

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, *input_shape, generator=g)
    with torch.no_grad():
        want = gm.eval()(x).detach().cpu().numpy()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    except Exception as e:  # onnxruntime's errors are its own classes; one line
        raise OnnxError(f"{path}: error: onnxruntime cannot run the export: "
                        + (str(e).strip().splitlines() or [type(e).__name__])[0]) from None
    if got.shape != want.shape:
        raise OnnxError(f"{path}: error: onnxruntime gives shape {got.shape}, torch {want.shape}")
    diff = float(np.abs(got.astype(np.float64) - want).max()) if want.size else 0.0
    scale = float(np.abs(want).max()) if want.size else 0.0
    return Agreement(batch, diff, diff / scale if scale > 0 else diff, tuple(want.shape))


def _sdpa_4d(q, k, v, *args, **kwargs):
    """scaled_dot_product_attention on 3-d (batch, S, d) inputs as one head of 4-d ones.

    The exporter converts only 4-d attention; einc's fused single heads are 3-d.
    """
    import torch.nn.functional as F

    if q.dim() == 3:
        return F.scaled_dot_product_attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1), *args,
                                              **kwargs).squeeze(1)
    return F.scaled_dot_product_attention(q, k, v, *args, **kwargs)


def _onnx_ready(gm):
    """``gm``, or a copy with the calls the exporter cannot take rewritten into ones it can (same function)."""
    import copy

    import torch.nn.functional as F

    sdpa = [n for n in gm.graph.nodes if n.op == "call_function" and n.target is F.scaled_dot_product_attention]
    if not sdpa:
        return gm
    gm = copy.deepcopy(gm)
    for n in gm.graph.nodes:
        if n.op == "call_function" and n.target is F.scaled_dot_product_attention:
            n.target = _sdpa_4d
    gm.recompile()
    return gm


_OVERLOAD = re.compile(r"OpOverload\(op='([\w.]+)'")
_TARGET = re.compile(r"target=([\w.]+)")


def _explain(e: Exception, gm, arch) -> str:
    text = str(e)
    m = _OVERLOAD.search(text) or _TARGET.search(text)
    if m is None:
        first = next((line.strip() for line in text.splitlines() if line.strip()), type(e).__name__)
        return f"{type(e).__name__}: {first}"
    aten = m.group(1).removeprefix("torch.ops.").removesuffix(".default")
    where = _which_op(aten, gm, arch)
    return f"{where}{aten}, which has no ONNX conversion (opset {OPSET})"


def _which_op(aten: str, gm, arch) -> str:
    """The einc operation whose lowering calls ``aten``: '"name" (at node /p) lowers to '; or ''."""
    base = aten.rsplit(".", maxsplit=1)[-1].strip("_").removeprefix("linalg_")
    for node in gm.graph.nodes:
        if node.op not in ("call_function", "call_method", "call_module"):
            continue
        target = node.target if node.op != "call_module" else type(gm.get_submodule(node.target)).__name__
        name = getattr(target, "__name__", str(target)).lower()
        if base and (base in name or name.strip("_") in base) and PATH in node.meta:
            path = node.meta[PATH]
            op = None
            if arch is not None:
                from .tree import Leaf, at

                try:
                    leaf = at(arch.tree, path)
                    op = leaf.op if isinstance(leaf, Leaf) else None
                except (IndexError, AttributeError):
                    op = None
            return (f'operation "{op}" ' if op else "") + f"(at node {format_path(path)}) lowers to "
    return ""


def _parse_file(g: Grammar, f: Path, shape: tuple[int, ...]) -> Architecture:
    return g.parse(f.read_text(encoding="utf-8"), shape)


def agreement_sweep(samples: int = 100, seed: int = 0, tolerance: float = 1e-4, echo=print) -> bool:
    """Every seed in examples/ and ``samples`` sampled networks: export, compare, report; True if all agree."""
    import random
    import tempfile

    import einc

    from .sample import Budget, Sampler

    g = einc.load("einspace")
    root = Path(__file__).resolve().parent.parent / "examples"
    shapes = {"attention_head": (256, 512), "resnet_block": (64, 32, 32)}
    cases: list[tuple[str, Callable[[], Architecture], tuple[int, ...]]] = []
    for f in sorted(root.glob("*.arch")):
        shape = shapes.get(f.stem, (3, 64, 64))
        cases.append((f.stem, functools.partial(_parse_file, g, f, shape), shape))
    rng = random.Random(seed)
    for i in range(samples):
        shape = ((3, 16, 16), (16, 32))[i % 2]
        sampler = Sampler(g.table, shape, Budget(max_params=200_000, max_flops=20_000_000, max_nodes=120))
        tree = sampler.sample(rng)
        mode = "Im" if len(shape) == 3 else "Col"
        cases.append((f"sample {i}", functools.partial(g.architecture, tree, mode), shape))
    worst, bad = 0.0, 0
    with tempfile.TemporaryDirectory() as d:
        for name, make, shape in cases:
            arch = make()
            gm = einc.build(arch, shape, num_classes=10)
            try:
                export_onnx(gm, shape, Path(d) / "m.onnx", arch=arch)
                a = compare(gm, Path(d) / "m.onnx", shape)
            except OnnxError as e:
                bad += 1
                echo(f"{name}: {e}")
                continue
            worst = max(worst, a.max_rel)
            bad += a.max_rel > tolerance
            echo(f"{name}: largest difference {a.max_abs:.3g} ({a.max_rel:.3g} relative)")
    echo(f"{len(cases)} networks: {len(cases) - bad} agree within {tolerance:g} relative; worst {worst:.3g}")
    return bad == 0


if __name__ == "__main__":  # python -m einc.onnx --samples 100
    import argparse
    import sys

    ap = argparse.ArgumentParser(prog="python -m einc.onnx", description=agreement_sweep.__doc__)
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    sys.exit(0 if agreement_sweep(args.samples, args.seed) else 1)
