"""The layer table of ``einc compile --summary``: shapes, parameters and FLOPs per layer.

Read off einc.infer alone (no torch): one row per leaf of the tree, in network order, with
a name, the operation, the per-sample output, its parameters and FLOPs summed over the copies
of a repeated subtree (``x4`` after the operation), and its tree path. Names follow
einc.lower's module names (``linear_3`` here is ``linear_3`` in the built model; a repeated
row is named after its first copy); operations without a module are numbered the same way.
With ``num_classes`` the head of paper B.1 (mean over positions, linear to classes) adds two rows.

    name      op                     output               params  FLOPs  path
    clone_0   clone(b=2)             2 x Im[64x32x32]          0      0  /0/0/0
    im2col_0  im2col(k=3, s=1, p=1)  Col[1024x576]@32x32       0      0  /0/1/0/0/0/0
    linear_0  linear(d=64)           Col[1024x64]@32x32   36,928  75.5M  /0/1/0/0/1/0/0
"""

from __future__ import annotations

from dataclasses import dataclass

from .infer import Inference
from .ops import IM, Library, show_value
from .tree import Expansion, Fork, Leaf, Node, Path

__all__ = ["Row", "rows", "summary"]


@dataclass(frozen=True, slots=True)
class Row:
    name: str
    path: str
    op: str
    output: str
    params: int
    flops: int


def rows(inference: Inference, library: Library, num_classes: int | None = None,
         tree: Node | None = None) -> list[Row]:
    """The table's rows; with ``tree`` (the inferred one), rows get einc.lower's names."""
    names = _names(tree, library) if tree is not None else {}
    out = []
    for layer in inference.layers:
        mine = names.get(layer.path, [])
        name, names[layer.path] = (mine[0] if mine else ""), mine[layer.copies:]
        order = {p.name: i for i, p in enumerate(library[layer.op].params)} if layer.op in library else {}
        args = sorted(layer.args, key=lambda kv: order.get(kv[0], len(order)))
        op = layer.op + ("(" + ", ".join(f"{k}={show_value(v)}" for k, v in args) + ")" if args else "")
        if layer.copies > 1:
            op += f" x{layer.copies}"
        out.append(Row(name, _path(layer.path), op, _features(layer.outputs),
                       layer.params * layer.copies, layer.flops * layer.copies))
    if num_classes is not None:
        (f,) = inference.output
        width = f.shape[0] if f.mode == IM else f.shape[-1]
        over = "H, W" if f.mode == IM else "S"
        out.append(Row("mean", "", f"mean over {over}", f"({width},)", 0, f.numel))
        out.append(Row("head", "", f"linear(d={num_classes})", f"({num_classes},)",
                       width * num_classes + num_classes, 2 * width * num_classes))
    return out


def summary(inference: Inference, library: Library, num_classes: int | None = None,
            tree: Node | None = None, title: str | None = None) -> str:
    """The table as text, with a total line."""
    table = rows(inference, library, num_classes, tree)
    out = _features(inference.output) if num_classes is None else f"({num_classes},)"
    total = Row("total", "", f"{len(table)} layers", out, sum(r.params for r in table),
                sum(r.flops for r in table))
    cells = [("name", "op", "output", "params", "FLOPs", "path")]
    cells += [(r.name, r.op, r.output, f"{r.params:,}", _si(r.flops), r.path) for r in [*table, total]]
    widths = [max(len(c[i]) for c in cells) for i in range(6)]
    right = (False, False, False, True, True, False)
    lines = [f"input {_features(inference.input)}" + (f"; {title}" if title else "")]
    for i, c in enumerate(cells):
        if i == len(cells) - 1:
            lines.append("  ".join("-" * w for w in widths[:5]))
        row = (v.rjust(w) if r else v.ljust(w) for v, w, r in zip(c, widths, right, strict=True))
        lines.append("  ".join(row).rstrip())
    return "\n".join(lines)


def _names(tree: Node, library: Library) -> dict[Path, list[str]]:
    """Names of each leaf's instances, numbered per hint in the order einc.lower walks.

    einc.lower lowers a repeated subtree once per copy, copy after copy; a row of infer
    standing for ``copies`` instances takes that many names and shows the first.
    """
    counts: dict[str, int] = {}
    names: dict[Path, list[str]] = {}
    stack: list[tuple[Node, Path]] = [(tree, ())]
    while stack:
        node, path = stack.pop()
        if isinstance(node, Leaf):
            op = library.get(node.op)
            hint = op.hint if op is not None else node.op.replace("-", "_")
            n = counts.get(hint, 0)
            counts[hint] = n + 1
            names.setdefault(path, []).append(f"{hint}_{n}")
        elif isinstance(node, Expansion):
            stack.extend((c, path + (i,)) for i, c in reversed(list(enumerate(node.children))))
        else:
            assert isinstance(node, Fork)
            for i in reversed(range(node.copies)):
                j = 0 if node.repeated else i
                stack.append((node.children[j], path + (j,)))
    return names


def _path(path: tuple[int, ...]) -> str:
    return "/" + "/".join(map(str, path))


def _features(fs) -> str:
    if len(fs) > 1 and len(set(fs)) == 1:
        return f"{len(fs)} x {fs[0]}"
    return ", ".join(map(str, fs))


def _si(n: int) -> str:
    """FLOPs in short form: 0, 950, 12.3K, 151M, 1.20G."""
    for unit, scale in (("G", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= scale:
            v = n / scale
            return f"{v:.3g}{unit}" if v < 1000 else f"{v:,.0f}{unit}"
    return str(n)
