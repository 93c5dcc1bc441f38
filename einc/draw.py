"""Pictures of an architecture: its dataflow graph beside its derivation tree (``einc draw``).

In the style of the einspace paper's Figure 1:

* left, the network's **dataflow graph**, top to bottom: one box per operation, the input
  black and the output red, every edge labelled with the feature it carries (``Im[64x32x32]``);
  a branching op fans out into side-by-side branches that its aggregation joins again; a
  repeated subtree (``[x]*4``) is drawn once inside a dashed frame marked ``x 4``;
* right, the **derivation tree**, root on the left: nonterminals (module labels such as
  ``sequential``, ``branching``, ``routing``) grey, operations coloured by group (branching
  ``#ffd966``, aggregation ``#a64d79``, routing ``#93c47d``, computation ``#6fa8dc``), each
  labelled with its bracket-notation name and hyperparameters.

``depth=K`` collapses every module deeper than K levels of the bracket tree into one grey
node, in both panels, naming its label, its operation count and parameters: a ResNet18 stays
readable at ``depth=2``. The layout is computed here (the graphs are series-parallel, so
nesting boxes is enough: no Graphviz); matplotlib, imported lazily, renders ``.svg``/``.png``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import EinError, ShapeError
from .notation import flattens, show
from .ops import Feature, Features, Library, NotApplicable, feature_for
from .tree import Expansion, Fork, Leaf, Node

if TYPE_CHECKING:
    from .api import Architecture

COLOURS = {"branching": "#ffd966", "aggregation": "#a64d79", "routing": "#93c47d",
           "computation": "#6fa8dc"}
GREY = "#cccccc"
INPUT, OUTPUT = "#000000", "#cc0000"
WHITE_TEXT = {"aggregation", "input", "output"}

FONT = 8.0  # points; 1 layout unit = 1 point
CHAR = 0.61 * FONT  # monospace advance
LINE = 1.35 * FONT
SMALL = 6.5  # edge labels
SMALL_CHAR = 0.61 * SMALL
PAD_X, PAD_Y = 5.0, 3.0
GAP_Y = 26.0  # between stacked blocks (holds an edge label)
GAP_X = 14.0  # between side-by-side branches
FRAME = 7.0  # padding of a repeated subtree's frame


class DrawError(EinError):
    """The picture cannot be made (unknown format, cannot write)."""


# ---------------------------------------------------------------- the view: bracket tree + features


@dataclass
class View:
    """A node of the bracket tree (flat chains, elided single-element alternatives)."""

    kind: str  # "op", "module", "collapsed", "fork"
    label: str
    group: str = ""  # an op's group
    children: list[View] = field(default_factory=list)
    inputs: Features = ()
    outputs: Features = ()
    ops: int = 0  # operations in the subtree (per network, repeated copies counted)
    params: int = 0
    copies: int = 1  # a fork's factor, when repeated
    repeated: bool = False


def view(tree: Node, library: Library, input_shape: Sequence[int], depth: int | None = None) -> View:
    """The bracket tree of ``tree`` with the features on every edge; modules deeper than ``depth`` collapsed."""
    fs = (feature_for(tuple(input_shape)),)
    try:
        v, _ = _view(tree, fs, library, 0, depth)
    except RecursionError:
        raise ShapeError("the tree is too deep to draw") from None
    return v


def _view(node: Node, fs: Features, lib: Library, level: int, depth: int | None) -> tuple[View, Features]:
    if isinstance(node, Leaf):
        op = lib.get(node.op)
        if op is None:
            raise ShapeError(f'unknown operation "{node.op}"')
        try:
            out = op.apply(fs, node.args)
        except NotApplicable as e:
            raise ShapeError(f"{node.op}: {e} (input {', '.join(map(str, fs))})") from None
        cost = op.cost(fs, **dict(node.args))
        return View("op", show(node), op.group, inputs=fs, outputs=out, ops=1, params=cost.params), out
    if isinstance(node, Fork):
        kids, outs = [], []
        if node.repeated:
            k, o = _view(node.children[0], fs[:1], lib, level, depth)
            kids, outs = [k], list(o) * node.copies
            ops, params = k.ops * node.copies, k.params * node.copies
        else:
            # no shape check here (infer does that): a fork that does not match its input draws what pairs up
            for child, f in zip(node.children, fs, strict=False):
                k, o = _view(child, (f,), lib, level, depth)
                kids.append(k)
                outs.extend(o)
            ops, params = sum(k.ops for k in kids), sum(k.params for k in kids)
        out = tuple(outs)
        return View("fork", "", children=kids, inputs=fs, outputs=out, ops=ops, params=params,
                    copies=node.copies, repeated=node.repeated), out
    if node.label is None and len(node.children) == 1:
        return _view(node.children[0], fs, lib, level, depth)
    kids, inp = [], fs
    for child in _flat_children(node):
        k, fs = _view(child, fs, lib, level + 1, depth)
        kids.append(k)
    v = View("module", node.label or node.head, children=kids, inputs=inp, outputs=fs,
             ops=sum(k.ops for k in kids), params=sum(k.params for k in kids))
    if depth is not None and level >= depth:
        v.kind = "collapsed"
        v.label = f"{v.label}(\u2026)"
    return v, fs


def _flat_children(node: Expansion) -> list[Node]:
    """``label(a, label(b, c))`` as ``[a, b, c]``: the printer's flat chains."""
    out: list[Node] = []
    while True:
        kids = node.children
        last = kids[-1]
        if isinstance(last, Expansion) and flattens(node, last):
            out.append(kids[0])
            node = last
            continue
        out.extend(kids)
        return out


def _count(n: int) -> str:
    for unit, size in (("M", 1_000_000), ("k", 1_000)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


# ---------------------------------------------------------------- layout: nested blocks


@dataclass
class _Block:
    w: float
    h: float
    entries: list[float]  # x of each input port, from the block's left
    exits: list[float]
    out: Features  # the feature at each exit


@dataclass
class _Box(_Block):
    lines: list[str] = field(default_factory=list)
    fill: str = GREY
    dark: bool = False
    dashed: bool = False


@dataclass
class _Stack(_Block):
    items: list[_Block] = field(default_factory=list)


@dataclass
class _Row(_Block):
    items: list[_Block] = field(default_factory=list)
    xs: list[float] = field(default_factory=list)


@dataclass
class _Frame(_Block):
    item: _Block | None = None
    mark: str = ""


def _text_w(lines: Sequence[str], char: float = CHAR) -> float:
    return max((len(s) for s in lines), default=0) * char


def _box(lines: list[str], fill: str, nin: int, nout: int, out: Features, dark=False, dashed=False) -> _Box:
    w = _text_w(lines) + 2 * PAD_X
    h = len(lines) * LINE + 2 * PAD_Y
    return _Box(w, h, [w / 2] * max(nin, 1), [w / 2] * max(nout, 1), out, lines, fill, dark, dashed)


def _label_w(f: Feature) -> float:
    return len(str(f)) * SMALL_CHAR + 4


def _block(v: View) -> _Block:
    if v.kind == "op":
        return _box([v.label], COLOURS.get(v.group, "#eeeeee"), len(v.inputs), len(v.outputs), v.outputs,
                    dark=v.group in WHITE_TEXT)
    if v.kind == "collapsed":
        return _box([v.label, f"{v.ops} ops, {_count(v.params)} params"], GREY, len(v.inputs), len(v.outputs),
                    v.outputs, dashed=True)
    if v.kind == "fork":
        if v.repeated:
            inner = _block(v.children[0])
            mark = f"\u00d7{v.copies}"
            side = FRAME + len(mark) * CHAR + 4  # the item stays centred: edges run straight
            w = inner.w + 2 * side
            x0 = side
            return _Frame(w, inner.h + 2 * FRAME, [x0 + inner.entries[0]] * v.copies,
                          [x0 + inner.exits[0]] * v.copies, v.outputs, inner, mark)
        items = [_block(c) for c in v.children]
        xs, x = [], 0.0
        for it in items:
            xs.append(x)
            x += max(it.w, it.exits[0] + _label_w(it.out[0])) + GAP_X
        w = x - GAP_X
        h = max(it.h for it in items)
        return _Row(w, h, [x0 + e for x0, it in zip(xs, items, strict=True) for e in it.entries],
                    [x0 + e for x0, it in zip(xs, items, strict=True) for e in it.exits], v.outputs, items, xs)
    return _stack([_block(c) for c in v.children])


def _stack(items: list[_Block]) -> _Stack:
    flat: list[_Block] = []
    for it in items:
        flat.extend(it.items if isinstance(it, _Stack) else [it])
    w = max(it.w for it in flat)
    for it in flat[:-1]:  # room for the edge labels right of each exit (blocks are centred)
        for e, f in zip(it.exits, it.out, strict=False):  # a block with no output still has one exit
            w = max(w, 2 * (e - it.w / 2 + _label_w(f)) + 8, 2 * (it.w / 2 - e) + 8)
    h = sum(it.h for it in flat) + GAP_Y * (len(flat) - 1)
    first, last = flat[0], flat[-1]
    return _Stack(w, h, [(w - first.w) / 2 + e for e in first.entries],
                  [(w - last.w) / 2 + e for e in last.exits], last.out, flat)


# ---------------------------------------------------------------- placing: drawing primitives


@dataclass
class _Canvas:
    boxes: list = field(default_factory=list)  # (x, y, w, h, lines, fill, dark, dashed, size)
    lines: list = field(default_factory=list)  # polylines [(x, y), ...]
    arrows: list = field(default_factory=list)  # (x, y) arrow tips, pointing down
    texts: list = field(default_factory=list)  # (x, y, text, size, colour, ha, va)
    frames: list = field(default_factory=list)  # (x, y, w, h)
    rlines: list = field(default_factory=list)  # tree edges (no arrow)


def _place(b: _Block, x: float, y: float, c: _Canvas) -> None:
    if isinstance(b, _Box):
        c.boxes.append((x, y, b.w, b.h, b.lines, b.fill, b.dark, b.dashed))
    elif isinstance(b, _Frame):
        assert b.item is not None
        c.frames.append((x, y, b.w, b.h))
        c.texts.append((x + b.w - 3, y + 3, b.mark, FONT, "#333333", "right", "top"))
        _place(b.item, x + (b.w - b.item.w) / 2, y + FRAME, c)
    elif isinstance(b, _Row):
        for x0, it in zip(b.xs, b.items, strict=True):
            _place(it, x + x0, y, c)
            for e in it.exits:  # shorter branches run on to the row's bottom
                if it.h < b.h:
                    c.lines.append([(x + x0 + e, y + it.h), (x + x0 + e, y + b.h)])
    elif isinstance(b, _Stack):
        top = y
        prev, prev_x = None, 0.0
        for it in b.items:
            ix = x + (b.w - it.w) / 2
            _place(it, ix, top, c)
            if prev is not None:
                _edges(prev, prev_x, top - GAP_Y, it, ix, top, c)
            prev, prev_x = it, ix
            top += it.h + GAP_Y


def _edges(a: _Block, ax: float, ay: float, b: _Block, bx: float, by: float, c: _Canvas) -> None:
    srcs = [ax + e for e in a.exits]
    dsts = [bx + e for e in b.entries]
    # a block with no output still has one exit: exits and features may differ in number
    pairs = list(zip(srcs, dsts, a.out, strict=False)) if len(srcs) == len(dsts) else [
        (s, d, f) for s, f in zip(srcs, a.out, strict=False) for d in dsts]
    mid = ay + 0.62 * (by - ay)
    labelled = set()
    for s, d, f in pairs:
        pts = [(s, ay), (d, by - 0.5)] if abs(s - d) < 0.5 else [(s, ay), (s, mid), (d, mid), (d, by - 0.5)]
        c.lines.append(pts)
        c.arrows.append((d, by))
        key = (round(s, 1), str(f))
        if key not in labelled:
            labelled.add(key)
            c.texts.append((s + 3, ay + 2, str(f), SMALL, "#444444", "left", "top"))


# ---------------------------------------------------------------- the derivation tree, left to right


ROW_H = LINE + 2 * PAD_Y + 5  # one leaf per row
COL_GAP = 22.0


def _tree_nodes(v: View, level: int, out: list, parent: int | None, mark: str = "") -> int:
    """Flatten the bracket tree: forks splice their branches into the module above."""
    idx = len(out)
    if v.kind == "op":
        lines, fill, dark, dashed = [v.label], COLOURS.get(v.group, "#eeeeee"), v.group in WHITE_TEXT, False
    elif v.kind == "collapsed":
        lines, fill, dark, dashed = [v.label, f"{v.ops} ops, {_count(v.params)} params"], GREY, False, True
    else:
        lines, fill, dark, dashed = [v.label], GREY, False, False
    out.append({"lines": lines, "fill": fill, "dark": dark, "dashed": dashed, "level": level, "parent": parent,
                "kids": [], "mark": mark})
    if v.kind == "module":
        for k in v.children:
            if k.kind == "fork":
                for kk in k.children:
                    out[idx]["kids"].append(_tree_nodes(kk, level + 1, out, idx,
                                                        f"\u00d7{k.copies}" if k.repeated else ""))
            else:
                out[idx]["kids"].append(_tree_nodes(k, level + 1, out, idx))
    return idx


def _place_tree(v: View, x0: float, y0: float, c: _Canvas) -> tuple[float, float]:
    nodes: list[dict] = []
    _tree_nodes(v, 0, nodes, None)
    levels = max(n["level"] for n in nodes) + 1
    widths = [0.0] * levels
    for n in nodes:
        n["w"] = _text_w(n["lines"]) + 2 * PAD_X
        n["h"] = len(n["lines"]) * LINE + 2 * PAD_Y
        widths[n["level"]] = max(widths[n["level"]], n["w"])
    xs, x = [], x0
    for w in widths:
        xs.append(x)
        x += w + COL_GAP + 10
    # rows: leaves in order; a parent sits midway between its first and last child
    row = [0.0]

    def place(i: int) -> None:  # iterative enough: depth of the bracket tree
        n = nodes[i]
        if not n["kids"]:
            n["y"] = y0 + row[0]
            row[0] += max(ROW_H, n["h"] + 5)
            return
        for k in n["kids"]:
            place(k)
        first, last = nodes[n["kids"][0]], nodes[n["kids"][-1]]
        n["y"] = (first["y"] + first["h"] / 2 + last["y"] + last["h"] / 2) / 2 - n["h"] / 2

    place(0)
    for n in nodes:
        n["x"] = xs[n["level"]]
        c.boxes.append((n["x"], n["y"], n["w"], n["h"], n["lines"], n["fill"], n["dark"], n["dashed"]))
        if n["parent"] is not None:
            p = nodes[n["parent"]]
            px, py = p["x"] + p["w"], p["y"] + p["h"] / 2
            cx, cy = n["x"], n["y"] + n["h"] / 2
            xm = xs[n["level"]] - COL_GAP / 2 - 5
            c.rlines.append([(px, py), (xm, py), (xm, cy), (cx, cy)])
            if n["mark"]:
                c.texts.append((xm + 2, cy - 1.5, n["mark"], SMALL, "#333333", "left", "bottom"))
    width = xs[-1] + widths[-1] - x0
    height = row[0]
    return width, height


# ---------------------------------------------------------------- public


def draw(arch: Architecture, input_shape: Sequence[int], path: str | Path, depth: int | None = None,
         title: str | None = None) -> Path:
    """Write the picture of ``arch`` at per-sample ``input_shape`` to ``path`` (.svg or .png).

    ``depth`` collapses modules deeper than that many levels of the bracket tree; ``title``
    heads the picture (default: parameters and operation count). Returns the path written.
    """
    return draw_tree(arch.tree, arch.grammar.library, input_shape, path, depth=depth, title=title)


def draw_tree(tree: Node, library: Library, input_shape: Sequence[int], path: str | Path,
              depth: int | None = None, title: str | None = None) -> Path:
    """``draw`` for a bare derivation tree and its operation library."""
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in ("svg", "png"):
        raise DrawError(f"{path}: error: a drawing is written as .svg or .png, not {path.suffix or 'no suffix'}")
    if depth is not None and depth < 0:
        raise DrawError(f"depth {depth}: error: give a depth of 0 or more")
    try:
        return _draw(tree, library, input_shape, path, fmt, depth, title)
    except RecursionError:
        raise DrawError(f"{path}: error: the tree is too deep to draw; give a --depth") from None


def _draw(tree: Node, library: Library, input_shape: Sequence[int], path: Path, fmt: str, depth: int | None,
          title: str | None) -> Path:
    v = view(tree, library, input_shape, depth)
    canvas = _Canvas()
    fin = v.inputs
    inp = _box([f"input {fin[0]}"], INPUT, 1, 1, fin, dark=True)
    out = _box([f"output {', '.join(map(str, v.outputs))}"], OUTPUT, len(v.outputs), 1, v.outputs, dark=True)
    flow = _stack([inp, _block(v), out])
    margin = 14.0
    head = 2 * FONT + 26 if title else FONT + 26
    _place(flow, margin, margin + head, canvas)
    tx = margin + flow.w + 50
    tw, th = _place_tree(v, tx, margin + head, canvas)
    total_w = tx + tw + margin
    total_h = margin + head + max(flow.h, th) + margin
    heading = title if title is not None else ""
    summary = f"{v.ops} operations, {v.params:,} parameters, input {fin[0]}" + (
        f", modules deeper than {depth} collapsed" if depth is not None else "")
    canvas.texts.append((margin, margin, heading or summary, FONT + 2, "#000000", "left", "top"))
    if heading:
        canvas.texts.append((margin, margin + FONT + 6, summary, FONT, "#444444", "left", "top"))
    canvas.texts.append((margin, margin + head - 6, "dataflow", FONT, "#777777", "left", "bottom"))
    canvas.texts.append((tx, margin + head - 6, "derivation tree", FONT, "#777777", "left", "bottom"))
    total_w = max(total_w, 2 * margin + max(len(heading) * (FONT + 2), len(summary) * FONT) * 0.61 + 20)
    try:
        _render(canvas, total_w, total_h, path, fmt)
    except OSError as e:
        raise DrawError(f"{path}: error: cannot write: {e.strerror or type(e).__name__}") from None
    return path


MAX_PIXELS = 32000  # a PNG side; larger pictures get a lower resolution


def _render(c: _Canvas, w: float, h: float, path: Path, fmt: str) -> None:
    import matplotlib
    from matplotlib.collections import LineCollection
    from matplotlib.figure import Figure
    from matplotlib.patches import FancyBboxPatch, Rectangle

    with matplotlib.rc_context({"svg.fonttype": "none", "font.family": "monospace",
                                "font.monospace": ["DejaVu Sans Mono"], "path.simplify": False}):
        fig = Figure(figsize=(w / 72, h / 72))
        ax = fig.add_axes((0, 0, 1, 1))
        ax.set_xlim(0, w)
        ax.set_ylim(h, 0)
        ax.axis("off")
        if c.rlines:
            ax.add_collection(LineCollection(c.rlines, colors="#888888", linewidths=0.7))
        if c.lines:
            ax.add_collection(LineCollection(c.lines, colors="#333333", linewidths=0.8))
        if c.arrows:
            ax.scatter([x for x, _ in c.arrows], [y - 2.2 for _, y in c.arrows], marker="v", s=9, c="#333333",
                       linewidths=0, zorder=3)
        for x, y, fw, fh in c.frames:
            ax.add_patch(Rectangle((x, y), fw, fh, fill=False, linestyle=(0, (3, 2)), linewidth=0.8,
                                   edgecolor="#555555"))
        for x, y, bw, bh, lines, fill, dark, dashed in c.boxes:
            ax.add_patch(FancyBboxPatch((x, y), bw, bh, boxstyle="round,pad=0,rounding_size=3", facecolor=fill,
                                        edgecolor="#555555" if not dark else fill, linewidth=0.7,
                                        linestyle=(0, (3, 2)) if dashed else "solid", zorder=2))
            for i, line in enumerate(lines):
                ax.text(x + bw / 2, y + PAD_Y + (i + 0.5) * LINE, line, ha="center", va="center_baseline",
                        fontsize=FONT if i == 0 else FONT - 1, color="white" if dark else "black", zorder=4)
        for x, y, text, size, colour, ha, va in c.texts:
            ax.text(x, y, text, ha=ha, va=va, fontsize=size, color=colour, zorder=4)
        dpi: float = 100 if fmt == "png" else 72
        dpi = min(dpi, MAX_PIXELS * 72 / max(w, h))
        fig.savefig(path, format=fmt, dpi=dpi, facecolor="white")
