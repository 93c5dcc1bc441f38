"""``einc compile``: an architecture to a standalone PyTorch file (and ONNX, a layer table)."""

from __future__ import annotations

import keyword
from pathlib import Path

import click

from ..errors import ArchError
from ._common import TASKS, _fail, _plugin_option, _shape_option, load_plugins, read_arch_argument


@click.command("compile")
@click.argument("arch")
@click.option("--grammar", "-g", default="einspace", show_default=True,
              help="A bundled grammar's name or the path of a .ein file.")
@_shape_option
@click.option("--classes", type=click.IntRange(min=1), default=None,
              help="Add the classification head (paper B.1): mean over positions, linear to N classes.")
@click.option("--output-shape", "output_shape", callback=lambda c, p, v: _output_shape(v), default=None,
              help="Add the head that outputs this per sample: K (mean over positions, linear to K: classes, "
                   "labels or values), or C,H,W / S,D (the paper's dense head: adaptive average pooling to the "
                   "target's positions, linear to its channels), e.g. 1,85,85 for Darcy Flow.")
@click.option("--task", "task", type=click.Choice(TASKS), default=None,
              help="Check the head against a task: classification, multilabel and regression take "
                   "--classes/--output-shape K, dense takes --output-shape C,H,W or S,D.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Write the PyTorch source here (default: print it).")
@click.option("--no-optimize", is_flag=True,
              help="Keep the graph as lowered (no Conv2d fusion, no rewrites).")
@click.option("--summary", "show_summary", is_flag=True,
              help="Print the layer table (shapes, parameters, FLOPs); without -o, instead of the source.")
@click.option("--class-name", default="Net", show_default=True, help="Name of the emitted nn.Module class.")
@click.option("--onnx", "onnx_path", type=click.Path(dir_okay=False), default=None,
              help="Also export the network to this ONNX file (opset 18, batch axis dynamic) and compare "
                   "onnxruntime with torch; without -o, instead of the source. Needs einc[onnx].")
@_plugin_option
def compile_(arch: str, grammar: str, input_shape, classes, output, no_optimize: bool, show_summary: bool,
             class_name: str, plugins: tuple[str, ...], onnx_path: str | None = None,
             output_shape: tuple[int, ...] | None = None, task: str | None = None) -> None:
    """Compile an architecture to a standalone PyTorch file.

    ARCH is a bracket-notation string or the path of a file holding one.
    """
    from .. import load

    if not class_name.isidentifier() or keyword.iskeyword(class_name):
        why = "a Python keyword" if keyword.iskeyword(class_name) else "not a Python identifier"
        raise click.BadParameter(f'"{class_name}" is {why}', param_hint="--class-name")
    output_shape = _head_shape(task, classes, output_shape)
    if output_shape is not None and len(output_shape) == 1:
        classes, output_shape = output_shape[0], None  # the classification head's form: the same network
    text, source_path = read_arch_argument(arch)
    g = load(grammar, load_plugins(plugins))
    shape = input_shape or g.default_shape()
    if shape is None:
        raise click.UsageError(f'the grammar "{grammar}" declares no start shape; give --input')
    try:
        parsed = g.parse(text, shape)
    except ArchError as e:  # also ShapeError; "line:col: error: ..." gets the file's name in front
        located = source_path is not None and str(e)[:1].isdigit()
        _fail(f"{source_path}:{e}" if located else str(e))
    if show_summary:
        from ..summary import summary

        click.echo(summary(parsed.infer(shape), g.library, classes, parsed.tree,
                           title=f"grammar {grammar}"))
        if output is None and onnx_path is None:
            return
    from ..api import build
    from ..emit import emit

    gm = build(parsed, shape, num_classes=classes, optimize=not no_optimize, output_shape=output_shape)
    if onnx_path is not None:
        _export_onnx(gm, shape, onnx_path, parsed)
        if output is None:
            return
    source = emit(gm, class_name=class_name, header_lines=[f"grammar: {grammar}"])
    if output is None:
        click.echo(source, nl=False)
        return
    try:
        Path(output).write_text(source, encoding="utf-8")
    except OSError as e:
        _fail(f"{output}: error: cannot write: {e.strerror or type(e).__name__}")
    params = sum(p.numel() for p in gm.parameters())
    click.echo(f"wrote {output}: class {class_name}, {params:,} parameters", err=True)


def _output_shape(value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        shape = tuple(int(v) for v in value.replace("x", ",").split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f'"{value}" is not a shape such as 10 or 1,85,85') from None
    if len(shape) not in (1, 2, 3) or min(shape) < 1:
        raise click.BadParameter(f'"{value}": an output is K, C,H,W or S,D of positive sizes')
    return shape


def _head_shape(task: str | None, classes: int | None, output_shape: tuple[int, ...] | None):
    """What the head outputs per sample, from compile's --task, --classes and --output-shape."""
    if classes is not None and output_shape is not None and output_shape != (classes,):
        raise click.UsageError(f"--classes {classes} and --output-shape {','.join(map(str, output_shape))} "
                               "disagree; give one of them")
    target = output_shape or ((classes,) if classes is not None else None)
    if task is None:
        return target
    if target is None:
        raise click.UsageError(f"--task {task} needs the head's output: "
                               + ("--output-shape C,H,W or S,D" if task == "dense"
                                  else "--classes or --output-shape K"))
    if (len(target) == 1) == (task == "dense"):
        raise click.UsageError(f"--task {task} takes " + ("--output-shape C,H,W or S,D (the target's shape)"
                                                          if task == "dense" else "one output size K")
                               + f", not {','.join(map(str, target))}")
    if classes is not None and task != "classification":
        raise click.UsageError(f"--classes is for classification; a {task} task takes --output-shape")
    return target


def _export_onnx(gm, shape, path: str, arch) -> None:
    """``compile --onnx``: export, run with onnxruntime against torch, print the largest difference."""
    from ..onnx import OPSET, compare, export_onnx

    export_onnx(gm, shape, path, arch=arch)
    agree = compare(gm, path, shape)
    click.echo(f"wrote {path}: ONNX opset {OPSET}, batch axis dynamic; onnxruntime vs torch on a batch of "
               f"{agree.batch}: largest difference {agree.max_abs:.3g} ({agree.max_rel:.3g} relative)", err=True)
