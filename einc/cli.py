"""The ``einc`` command line: the only module that prints, reads argv or exits.

Every user-facing failure is an ``EinError`` (or a click usage error) and ends as one located
message and a non-zero exit: 1 for bad input, 2 for bad usage, 130 for an interrupt. Any other
exception is a bug in einc itself (a user's plugin code is reported as an ``EinError``, see
``einc.ops.is_builtin``): like mypy's, it prints its full traceback, then one line saying
"INTERNAL ERROR" and asking for a report, and exits 70 (``INTERNAL_ERROR``: sysexits.h's
EX_SOFTWARE, "internal software error"), a code no user error gives. Heavy imports (torch, the
runtime) happen inside the commands that need them.
"""

from __future__ import annotations

import errno
import json
import keyword
import math
import os
import shlex
import sys
from pathlib import Path

import click

from .errors import ArchError, EinError


def _fail(message: str, code: int = 1) -> None:
    click.echo(message, err=True)
    sys.exit(code)


INTERNAL_ERROR = 70
"""The exit code of a bug in einc (sysexits.h's EX_SOFTWARE); 1 and 2 are the user's errors."""


def _internal_error() -> None:
    """The exception being handled is einc's own bug: its traceback, then one line, exit 70."""
    import traceback

    from . import __version__

    click.echo(traceback.format_exc().rstrip("\n"), err=True)
    _fail(f"einc: INTERNAL ERROR (einc {__version__}): this is a bug in einc, not in your input; "
          "please report it with the command and the traceback above", INTERNAL_ERROR)


class _Group(click.Group):
    """Turns EinError (and a user's interrupt) into a message and an exit code, never a traceback;
    any other exception is a bug in einc and keeps its traceback (``_internal_error``)."""

    def invoke(self, ctx):
        import warnings

        default = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if category.__module__.startswith("einc"):  # einc's own warnings are located lines already
                click.echo(str(message), err=True)
            else:
                default(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        try:
            return super().invoke(ctx)
        except EinError as e:
            _fail(str(e))
        except KeyboardInterrupt as e:  # a Stopped search's SIGTERM is 143
            from einc.runtime.stop import exit_code

            _fail("interrupted", exit_code(e))
        except (click.exceptions.ClickException, click.exceptions.Abort, click.exceptions.Exit, EOFError):
            raise  # usage errors, --help, an aborted prompt: click reports them
        except OSError as e:
            if e.errno == errno.EPIPE:  # `einc sample ... | head`: click closes quietly
                raise
            _internal_error()
        except Exception:
            _internal_error()
        finally:
            warnings.showwarning = default


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="einc")
def main() -> None:
    """einc: search spaces written as grammars, compiled to PyTorch."""


def parse_shape(value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        shape = tuple(int(v) for v in value.replace("x", ",").split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f'"{value}" is not a shape such as 3,32,32') from None
    if len(shape) not in (2, 3) or min(shape) < 1:
        raise click.BadParameter(f'"{value}": a shape is C,H,W (Im mode) or S,D (Col mode) of positive sizes')
    return shape


TASKS = ("classification", "multilabel", "regression", "dense")  # runtime/task.py's kinds
METRICS = ("accuracy", "error", "map", "auroc", "mse", "mae", "r2", "rel-l2")  # runtime/task.py's metrics


def _shape_option(f):
    return click.option("--input", "input_shape", callback=lambda c, p, v: parse_shape(v),
                        help="Input shape without batch: C,H,W (Im mode) or S,D (Col mode).")(f)


def load_plugins(paths: tuple[str, ...]):
    """The built-in library, extended by each plugin file's ``OPS`` list (explicit opt-in only)."""
    from .ops import BUILTIN
    from .plugins import load_plugin

    library = BUILTIN
    for path in paths:
        library = library.extend(load_plugin(path))
    return library


_plugin_option = click.option("--plugin", "plugins", multiple=True, type=click.Path(dir_okay=False),
                              help="A Python file whose OPS list adds operations (runs that file).")


@main.command()
@click.argument("file")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report.")
@_plugin_option
def check(file: str, as_json: bool, plugins: tuple[str, ...]) -> None:
    """Check a .ein grammar (a path, or a bundled name such as einspace) and report on it."""
    from .ein import analyse, grammar_path, read_grammar, read_problem

    library = load_plugins(plugins)
    try:
        path = grammar_path(file)
        text = read_grammar(path)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        _fail(f"{file}:1:1: error: cannot read: {read_problem(e)}  [include]")
    table, diags, report = analyse(text, str(path) if path != Path(file) else file, library)
    errors = [d for d in diags if d.severity == "error"]
    if as_json:
        click.echo(json.dumps(_report_json(file, table, diags, report), indent=2))
    else:
        for d in diags:
            click.echo(d.render(), err=True)
        if not errors and table is not None and report is not None:
            click.echo(format_report(file, table, report))
        elif errors:
            click.echo(f"{file}: {len(errors)} error(s)", err=True)
    sys.exit(1 if errors else 0)


def looks_like_arch(arg: str) -> bool:
    """Whether an argument that names no file is bracket-notation text rather than a path.

    Bracket notation writes "(", "[", "=" or "," as soon as it holds more than one bare op name,
    and a path hardly ever does; so such an argument is architecture text even when it also has
    a "." (``linear(d=1.5)``) or a "/". Without any, an argument with a "/", "\\", "." or "~" is
    a path, and a bare word such as ``relu`` is an architecture."""
    return _has_bracket(arg) or not any(c in arg for c in "/\\.~")


def _has_bracket(arg: str) -> bool:
    return any(c in arg for c in "()[]=,\n")


def read_arch_argument(arg: str) -> tuple[str, str | None]:
    """(architecture text, file it came from or None) for an argument that is either a path
    or a bracket-notation string. An existing file is read; an existing directory or device is
    refused; otherwise bracket notation (``looks_like_arch``) is returned as text for the parser
    to judge, and anything else is a path naming no file, reported as one."""
    if os.path.isfile(arg):  # (a long architecture string is no path: isfile says so, never raises)
        try:
            return Path(arg).read_text(encoding="utf-8"), arg
        except (OSError, UnicodeDecodeError) as e:
            reason = "not UTF-8 text" if isinstance(e, UnicodeDecodeError) else e.strerror or type(e).__name__
            _fail(f"{arg}: error: cannot read: {reason}")
    try:
        exists = os.path.exists(arg)
    except (OSError, ValueError):
        exists = False
    if exists:
        kind = "a directory" if os.path.isdir(arg) else "not a regular file"
        _fail(f"{arg}: error: {kind}; give an architecture file or a bracket-notation string")
    if not looks_like_arch(arg):
        _fail(f"{arg}: error: no such file (an architecture is a file's path or a bracket-notation string)")
    return arg, None


@main.command("compile")
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
    from . import load

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
        from .summary import summary

        click.echo(summary(parsed.infer(shape), g.library, classes, parsed.tree,
                           title=f"grammar {grammar}"))
        if output is None and onnx_path is None:
            return
    from .api import build
    from .emit import emit

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


def _num(x: float) -> float | str | None:
    if math.isnan(x):
        return None
    return "infinite" if math.isinf(x) else round(x, 6)


def _report_json(file, table, diags, report) -> dict:
    out: dict = {"file": file, "ok": not any(d.severity == "error" for d in diags),
                 "diagnostics": [{"line": d.span.line if d.span else None, "col": d.span.col if d.span else None,
                                  "path": d.span.path if d.span else None, "severity": d.severity,
                                  "code": d.code, "message": d.message} for d in diags]}
    if table is not None and report is not None:
        out.update({
            "start": table.start.symbol, "nonterminals": len(table.rules),
            "rules": sum(len(r) for r in table.rules.values()),
            "alternatives": sum(len(r.alternatives) for rs in table.rules.values() for r in rs),
            "spectral_radius": report.rho, "network_spectral_radius": report.rho_network,
            "consistent": report.rho < 1,
            "expected_expansions": {k: _num(v) for k, v in report.expansions.items()},
            "expected_derivation_nonterminals": _num(report.expected_nonterminals),
            "expected_derivation_terminals": _num(report.expected_terminals),
            "expected_network_operations": _num(report.network_terminals),
            "critical_probabilities": {k: {"consistency": _num(c), "finite_network_size": _num(n), "now": now}
                                       for k, (c, n, now) in report.critical.items()},
        })
    return out


def format_report(file: str, table, report) -> str:
    nrules = sum(len(r) for r in table.rules.values())
    nalts = sum(len(r.alternatives) for rs in table.rules.values() for r in rs)
    shape = f" {table.start.shape}" if table.start.shape else ""
    lines = [f"{file}: {len(table.rules)} nonterminals, {nrules} rules, {nalts} alternatives "
             f"(after op variants); start {table.start.symbol}, {report.start_mode}{shape}",
             f"spectral radius rho = {report.rho:.4f}: " + ("consistent (< 1)" if report.rho < 1 else "NOT consistent"),
             "expected expansions per derivation ((I - E)^-1 from the start):",
             "  " + "  ".join(f"{k} {_fmt(v)}" for k, v in report.expansions.items()),
             f"expected derivation size: {_fmt(report.expected_nonterminals)} nonterminals + "
             f"{_fmt(report.expected_terminals)} operations",
             "expected network size (repeated subtrees counted per copy): " +
             (f"{_fmt(report.network_terminals)} operations" if not math.isinf(report.network_terminals)
              else f"infinite (network radius {report.rho_network:.4f} >= 1)")]
    if report.critical:
        lines.append("critical probability of each recursive nonterminal's terminating alternatives:")
        for head, (crit, net, now) in report.critical.items():
            lines.append(f"  {head}: now {now:.4f}; consistent above {_fmt(crit)}; "
                         f"finite expected network size above {_fmt(net)}")
    return "\n".join(lines)


def _fmt(x: float) -> str:
    if math.isnan(x):
        return "none"
    return "infinite" if math.isinf(x) else f"{x:.4g}"


def _budget_options(f):
    from .sample import Budget

    d = Budget()
    for name, help_ in reversed([("max-params", "parameters"), ("max-flops", "FLOPs per sample"),
                                 ("max-activations", "activation elements per sample"),
                                 ("max-nodes", "derivation nodes"), ("max-depth", "derivation depth")]):
        f = click.option(f"--{name}", type=click.IntRange(1), default=getattr(d, name.replace("-", "_")),
                         show_default=True, help=f"Budget: most {help_}.")(f)
    return f


def _budget(kw):
    from .sample import Budget

    return Budget(**{k: kw.pop(k) for k in list(kw) if k.startswith("max_")})


def _sampling_setup(grammar: str, input_shape, p_stop, plugins):
    from .api import load
    from .sample import with_stop_probability

    g = load(grammar, load_plugins(plugins))
    shape = input_shape or g.default_shape()
    if shape is None:
        raise click.BadParameter("the grammar declares no default shape; give --input", param_hint="--input")
    if p_stop is not None:
        from .api import Grammar

        g = Grammar(with_stop_probability(g.table, p_stop))
    return g, shape


@main.command()
@click.argument("grammar")
@_shape_option
@click.option("-n", "count", type=click.IntRange(1), default=10, show_default=True, help="How many samples.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--p-stop", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="Probability of the recursive nonterminals' terminating alternatives (einspace: p(M -> C)).")
@click.option("--json", "as_json", is_flag=True, help="JSON lines with size, params, FLOPs.")
@click.option("--verify", is_flag=True, help="Build every sample, run a batch of 2, check the output shape.")
@_budget_options
@_plugin_option
def sample(grammar, input_shape, count, seed, p_stop, as_json, verify, plugins, **kw) -> None:
    """Print COUNT architectures sampled from GRAMMAR (a .ein path or a bundled name)."""
    import random

    from .infer import infer
    from .notation import show
    from .sample import Sampler
    from .tree import counts

    g, shape = _sampling_setup(grammar, input_shape, p_stop, plugins)
    sampler = Sampler(g.table, shape, _budget(kw))
    rng = random.Random(seed)
    failures = 0
    for i in range(count):
        tree = sampler.sample(rng)
        text = show(tree)
        inf = infer(tree, g.library, shape)
        if as_json:
            c = counts(tree)
            click.echo(json.dumps({"index": i, "arch": text, "terminals": c.terminals, "nonterminals": c.nonterminals,
                                   "depth": c.depth, "params": inf.params, "flops": inf.flops,
                                   "activations": inf.activations, "output": list(inf.output[0].shape)}))
        else:
            click.echo(text)
        if verify:
            problem = _verify(g.architecture(tree), shape, inf)
            if problem:
                failures += 1
                click.echo(f"sample {i}: FAILED: {problem}: {text}", err=True)
    if verify:
        click.echo(f"verified {count} samples: {count - failures} passed, {failures} failed", err=True)
        sys.exit(1 if failures else 0)


def _verify(arch, shape, inf) -> str | None:
    """Build, run a batch of 2 and compare with the inferred output; the problem, or None."""
    import torch

    from .api import build

    try:
        model = build(arch, input_shape=shape)
        with torch.no_grad():
            out = model(torch.randn(2, *shape))
    except Exception as e:  # a sample that fails to build or run is exactly what --verify reports
        return f"{type(e).__name__}: {e}".splitlines()[0]
    want = (2, *inf.output[0].shape)
    if tuple(out.shape) != want:
        return f"output shape {tuple(out.shape)}, inferred {want}"
    if not torch.isfinite(out).all():
        return "non-finite output"
    return None


@main.command()
@click.argument("grammar")
@_shape_option
@click.option("-n", "count", type=click.IntRange(1), default=2000, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--p-stop", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="Probability of the recursive nonterminals' terminating alternatives.")
@_budget_options
@_plugin_option
def stats(grammar, input_shape, count, seed, p_stop, plugins, **kw) -> None:
    """Size distribution of sampled derivations, as in the paper's Table 6."""
    import random

    from .sample import Sampler
    from .stats import describe, table6_rows

    g, shape = _sampling_setup(grammar, input_shape, p_stop, plugins)
    sampler = Sampler(g.table, shape, _budget(kw))
    rng = random.Random(seed)
    trees = [sampler.sample(rng) for _ in range(count)]
    click.echo(f"{count} samples of {grammar} at input {','.join(map(str, shape))}")
    click.echo(describe(table6_rows(trees)))


@main.command()
@click.option("--grammar", default="einspace", show_default=True, help="A .ein file or a bundled grammar name.")
@click.option("--data", default=None,
              help='"digits" (embedded, no download), an Unseen-NAS folder, or a .npz file '
                   "[default: digits; none with --objective].")
@click.option("--objective", default=None, metavar="FILE.py:FUNC",
              help="Score each candidate with your own FUNC(arch, ctx) instead of training it on --data "
                   "(FILE.py:FUNC or module:FUNC): it returns a float, or a dict with score and other metrics.")
@click.option("--minimize/--maximize", default=False,
              help="With --objective: whether smaller scores are better [default: --maximize].")
@_shape_option
@click.option("--task", type=click.Choice(TASKS), default=None,
              help="What the targets are: class indices, 0/1 labels (N,K), values (N or N,K), or targets with the "
                   "inputs' rank [default: from the training targets; multilabel only when given].")
@click.option("--metric", type=click.Choice(METRICS), default=None,
              help="The validation metric searched for: accuracy, error (classification); map, auroc "
                   "(multilabel); mse, mae, r2 (regression); rel-l2, mse, auroc (dense) [default: the first].")
@click.option("--strategy", type=click.Choice(["rs", "re", "sample"]), default="re", show_default=True,
              help="Random search, regularised evolution, or random sampling.")
@click.option("--seeds", "seed_files", multiple=True,
              help="Seeds of the evolution's population (repeatable): an architecture file, a bundled seed "
                   "(resnet18, vit, wrn16_4_published, ...), mix (the paper's RE(Mix): all four published) "
                   "or a bracket-notation string.")
@click.option("--budget", type=click.IntRange(1), default=20, show_default=True, help="Evaluations.")
@click.option("--epochs", type=click.IntRange(1), default=8, show_default=True, help="Epochs per evaluation.")
@click.option("--final-epochs", type=click.IntRange(1), default=None,
              help="Epochs to retrain the best on train+valid [default: --epochs].")
@click.option("--fidelity", default=None, callback=lambda c, p, v: _epochs_list(v),
              help="Multi-fidelity: epochs per rung of successive halving, e.g. 1,3,9 (replaces --epochs).")
@click.option("--eta", type=click.IntRange(2), default=3, show_default=True,
              help="With --fidelity: the best 1/ETA of each rung is trained again for the next rung's epochs.")
@click.option("--population", type=click.IntRange(1), default=100, show_default=True)
@click.option("--tournament", type=click.IntRange(1), default=10, show_default=True)
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=0.04, show_default=True)
@click.option("--weight-decay", "weight_decay", type=click.FloatRange(0), default=3e-4, show_default=True,
              help="SGD weight decay (the paper's per-task values: docs/tasks.md).")
@click.option("--batch-size", type=click.IntRange(1), default=256, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds sampling, mutation and training.")
@click.option("--device", default=None, help="cpu, cuda, cuda:1 ... [default: cuda when present]")
@click.option("--workers", type=click.IntRange(1), default=1, show_default=True,
              help="Candidates trained at once, each in its own process; the results do not depend on it.")
@click.option("--lag", type=click.IntRange(0), default=None,
              help="Proposal k is made from the results of proposals before k - LAG, in proposal order, so a "
                   "seed gives one journal whatever --workers is; more than LAG / 2 workers may wait [default: 8].")
@click.option("--time-limit", type=click.FloatRange(0, min_open=True), default=None,
              help="Seconds one evaluation may take before it counts as failed.")
@click.option("--compile", "compile_model", is_flag=True, help="torch.compile each candidate (for GPUs).")
@click.option("--amp/--no-amp", default=None,
              help="bfloat16 autocast on CUDA [default: where it pays, by the candidate's FLOPs].")
@click.option("--graphs/--no-graphs", default=None,
              help="Capture each training step as a CUDA graph [default: on for CUDA].")
@click.option("--out", type=click.Path(file_okay=False), default="runs/search", show_default=True)
@click.option("--resume", is_flag=True, help="Continue the search recorded in --out with its saved settings.")
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]",
              help="Evaluate on Ray: alone, a local Ray runtime; with HEAD:6379, that cluster (pip install "
                   "'einc[ray]'). Not saved: give it again with --resume.")
@click.option("--gpus-per-eval", type=click.FloatRange(0), default=None,
              help="With --ray: GPUs per evaluation, fractions allowed [default: 1 when the cluster has GPUs, else 0].")
@click.option("--retries", type=click.IntRange(0), default=None,
              help="With --ray: how often an evaluation whose worker or node died is resubmitted [default: 1].")
@_budget_options
@_plugin_option
def search(grammar, data, strategy, seed_files, budget, epochs, final_epochs, fidelity, eta, population,
           tournament, lr, batch_size, seed, device, workers, lag, time_limit, compile_model, amp, graphs, out, resume,
           plugins, **kw) -> None:
    """Search GRAMMAR's space on a dataset; results survive a crash (--resume).

    --budget counts trainings: a proposal that repeats an architecture already evaluated reuses
    its result for free. --time-limit makes results depend on machine load (a candidate near the
    limit passes on an idle machine and fails on a busy one); bound cost with --max-flops and
    --max-params instead where you can.
    """
    from tqdm import tqdm

    from einc.runtime.report import format_summary
    from einc.runtime.search import SearchConfig, run_search
    from einc.runtime.stop import stop_on_signals

    # execution settings, not the search's: they stay out of SearchConfig and config.json
    ray_address, gpus_per_eval, retries = kw.pop("ray_address"), kw.pop("gpus_per_eval"), kw.pop("retries")
    if ray_address is None and (gpus_per_eval is not None or retries is not None):
        _fail("error: --gpus-per-eval and --retries apply to --ray only", 2)
    objective, input_shape = kw.pop("objective"), kw.pop("input_shape")
    if objective is None and (input_shape is not None or kw["minimize"]):
        _fail("error: --input and --minimize apply to --objective only (the data gives the input shape)", 2)
    if objective is None and data is None:
        data = "digits"
    if objective is not None:  # a file is recorded by its absolute path, so that --resume finds it anywhere
        where, _, func = objective.rpartition(":")
        if where.endswith(".py") or os.sep in where:
            objective = f"{Path(where).resolve()}:{func}"
    named = _seeds(seed_files)
    seeds = tuple(text for _, text in named)
    config = SearchConfig(grammar=grammar, data=data, strategy=strategy, seeds=seeds,
                          seed_names=tuple(name for name, _ in named), budget=budget,
                          population=population, tournament=tournament, epochs=epochs,
                          fidelity=fidelity or (), eta=eta,
                          final_epochs=final_epochs, lr=lr, batch_size=batch_size, seed=seed, device=device,
                          time_limit=time_limit, workers=workers, compile=compile_model, amp=amp, graphs=graphs,
                          plugins=tuple(str(Path(f).resolve()) for f in plugins), objective=objective,
                          input_shape=input_shape, **({} if lag is None else {"lag": lag}), **kw)
    if ray_address is not None:
        from einc.runtime.cluster import RayMissing, resume_command, search_evaluator

        hint = resume_command(out, ray_address, gpus_per_eval, 1 if retries is None else retries)
    else:
        hint = f"einc search --out {shlex.quote(str(out))} --resume"
    evaluator = bar = stopped = None
    with stop_on_signals():  # SIGINT and SIGTERM raise Stopped (a KeyboardInterrupt) from here on
        try:
            if ray_address is not None:
                try:
                    evaluator = search_evaluator(config, out, resume, ray_address, gpus_per_eval,
                                                 1 if retries is None else retries)
                except RayMissing as e:
                    _fail(str(e), 2)
            tqdm.monitor_interval = 0  # no monitor thread: nothing to join when a stop lands mid-refresh
            bar = tqdm(total=None, desc="search", unit="training", dynamic_ncols=True, file=sys.stderr)

            def show(p) -> None:
                bar.total = p.total
                bar.n = p.done
                if config.objective is not None:
                    bar.set_postfix_str("best score " + ("n/a" if p.best is None else f"{p.best:g}"))
                else:
                    bar.set_postfix_str("best val " + ("n/a" if p.best is None else _progress_value(config, p.best)))
                bar.refresh()

            if resume and (Path(out) / "config.json").exists():
                config = SearchConfig.load(Path(out) / "config.json")
            if config.objective is not None:  # einc.search's path: the user's function scores each candidate
                from einc.runtime.study import run

                result = run(config, out, resume=resume, on_progress=show, evaluator=evaluator)
                summary = result.summary
            else:
                summary = run_search(config, out, resume=resume, on_progress=show, evaluator=evaluator)
        except KeyboardInterrupt as e:  # Stopped by a signal, or a plain KeyboardInterrupt
            stopped = e
        finally:  # every wait in here is bounded; a second signal exits at once
            if bar is not None:
                bar.close()
            if evaluator is not None:  # kills its actors (cancelling their tasks), stops a Ray runtime it started
                evaluator.close()
        if stopped is not None:
            _stopped(stopped, out, hint)
        if config.objective is not None:
            from einc.runtime.study import format_result

            click.echo(format_result(result, config))
            if result.best is None:
                _fail(f"{out}: error: every evaluation failed "
                      f"({', '.join(sorted({str(t.reason).split(':')[0] for t in result.trials}))}); "
                      "nothing to report as best")
            return
        click.echo(format_summary(summary, Path(out)))
        if summary["best_index"] is None:
            _fail(f"{out}: error: every evaluation failed "
                  f"({', '.join(summary['failures']) or 'no reason recorded'}); nothing to report as best")


def _progress_value(config, value: float) -> str:
    """The best value so far as the progress bar shows it: accuracy as before, other metrics named."""
    task = config.data_task()  # the data is loaded (and cached) by then
    if task is None or task.metric == "accuracy":
        return f"{100 * value:.2f}%"
    return f"{task.metric} {task.format(value)}"


def _stopped(e: KeyboardInterrupt, out: str, hint: str) -> None:
    """A signal stopped the search (its workers are stopped): say how to resume, exit 128 + signal."""
    from einc.runtime.stop import exit_code, kill_children

    kill_children()  # the fork server too, which may still be importing torch
    name = e.args[0] if e.args else "SIGINT"
    if (Path(out) / "config.json").exists():
        _fail(f"stopped ({name}): every finished evaluation is kept in {Path(out) / 'journal.jsonl'}; "
              f"continue with: {hint}", exit_code(e))
    _fail(f"stopped ({name}) before the search began; nothing was recorded in {out}", exit_code(e))


@main.command()
@click.argument("out", type=click.Path(file_okay=False, exists=True))
def report(out: str) -> None:
    """Rewrite OUT's plot.png and summary.json from its journal (also while the search runs)."""
    from einc.runtime.search import report_folder

    click.echo(report_folder(out))


def _seeds(values: tuple[str, ...]) -> list[tuple[str, str]]:
    """(name, text) of each --seeds value: a file (named by its stem), else a bundled seed or group
    name, else bracket-notation text (one with a bracket, "=" or ","; a bare word is taken for a
    seed name) named inlineN, N its place among the values; the search parses it like a file's."""
    from .seeds import named_seeds, seed_names

    out: list[tuple[str, str]] = []
    for n, value in enumerate(values, 1):
        try:
            exists = os.path.exists(value)
        except (OSError, ValueError):
            exists = False
        if not exists and value not in seed_names() and _has_bracket(value):
            out.append((f"inline{n}", value.strip()))
        elif exists or value not in seed_names():
            if not os.path.isfile(value):
                _fail(f'{value}: error: no such file, and no bundled seed of that name ({", ".join(seed_names())})')
            try:
                out.append((Path(value).stem, Path(value).read_text(encoding="utf-8").strip()))
            except (OSError, UnicodeDecodeError) as e:
                _fail(f"{value}:1:1: error: cannot read the seed: {getattr(e, 'strerror', None) or type(e).__name__}")
        else:
            out += named_seeds(value)
    return out


def _epochs_list(value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        rungs = tuple(int(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f'"{value}" is not a list of epochs such as 1,3,9') from None
    if min(rungs) < 1 or list(rungs) != sorted(set(rungs)):
        raise click.BadParameter(f'"{value}": epochs per rung must be positive and increasing')
    return rungs


def _read_arch_file(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        _fail(f"{path}:1:1: error: cannot read: {getattr(e, 'strerror', None) or type(e).__name__}")
        raise  # unreachable: _fail exits


def _located(e: ArchError, path: str | None) -> str:
    """An ArchError's message with the file's name in front of its line:col."""
    return f"{path}:{e}" if path is not None and str(e)[:1].isdigit() else str(e)


@main.command("fmt")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--grammar", "-g", default="einspace", show_default=True,
              help="A bundled grammar's name or the path of a .ein file.")
@click.option("--input", "input_shape", callback=lambda c, p, v: parse_shape(v),
              help="Input shape (its rank sets the mode); default: the grammar's start mode, then the other.")
@click.option("-i", "--in-place", is_flag=True, help="Rewrite the files that are not formatted.")
@click.option("--check", is_flag=True, help="Change nothing; exit 1 when a file is not formatted.")
@click.option("--width", type=click.IntRange(20), default=100, show_default=True, help="Columns per line.")
@_plugin_option
def fmt_(files: tuple[str, ...], grammar: str, input_shape, in_place: bool, check: bool, width: int,
         plugins: tuple[str, ...]) -> None:
    """Print architecture files in the canonical indented form (one child per line past WIDTH)."""
    from . import load
    from .fmt import fmt, parse_any_mode
    from .ops import feature_for

    if in_place and check:
        raise click.UsageError("give -i or --check, not both")
    g = load(grammar, load_plugins(plugins))
    mode = feature_for(input_shape).mode if input_shape else None
    unformatted = 0
    for path in files:
        text = _read_arch_file(path)
        try:
            tree = parse_any_mode(text, g.table, mode)
        except ArchError as e:
            _fail(_located(e, path))
        new = fmt(tree, width) + "\n"
        if check:
            if new != text:
                unformatted += 1
                click.echo(f"{path}: not formatted (einc fmt -i {path})", err=True)
        elif in_place:
            if new != text:
                try:
                    Path(path).write_text(new, encoding="utf-8")
                except OSError as e:
                    _fail(f"{path}: error: cannot write: {e.strerror or type(e).__name__}")
                click.echo(f"reformatted {path}", err=True)
        else:
            click.echo(new, nl=False)
    sys.exit(1 if unformatted else 0)


@main.command("fit")
@click.argument("journal", type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Where to write the fitted .ein.")
@click.option("--top", type=click.IntRange(1), default=10, show_default=True,
              help="Fit to the K best evaluated architectures (status ok, best by the search's metric).")
@click.option("--strength", type=click.FloatRange(0, min_open=True), default=10.0, show_default=True,
              help="Dirichlet prior strength S: pseudo-counts per rule on the grammar's own probabilities.")
@click.option("--grammar", "-g", default=None,
              help="The grammar the search used [default: the one in config.json beside the journal, else einspace].")
@_plugin_option
def fit_(journal: str, output: str, top: int, strength: float, grammar: str | None,
         plugins: tuple[str, ...] = ()) -> None:
    """Learn GRAMMAR's rule probabilities from the best architectures of a search.

    JOURNAL is a search's journal.jsonl or the folder holding it. Writes OUTPUT: the grammar's
    own text with new @ probabilities (comments and layout kept), consistent (rho <= 0.99).
    """
    import warnings

    from einc.runtime.journal import Journal

    from .ein import grammar_path, read_grammar, read_problem
    from .fit import FitError, fit_grammar, parse_either
    from .notation import show

    path = Path(journal)
    if path.is_dir():
        path = path / "journal.jsonl"
    if not path.is_file():
        _fail(f"{path}: error: no such journal file")
    if grammar is None:
        grammar = _search_grammar(path.parent / "config.json")
    gpath = grammar_path(grammar)
    try:
        text = read_grammar(gpath)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        _fail(f"{grammar}:1:1: error: cannot read the grammar: {read_problem(e)} (give --grammar)")
    from . import compile_grammar

    library = load_plugins(plugins or _search_plugins(path.parent / "config.json"))
    g = compile_grammar(text, str(gpath), library)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        records = Journal(path).records()
    for w in caught:
        click.echo(str(w.message), err=True)
    goal = _search_goal(path.parent / "config.json")
    best: dict[str, tuple[tuple[int, float], int, dict]] = {}
    for r in records:  # each architecture's best evaluation, by the search's own goal (any rung first)
        score = goal.score(r) if r.get("kind", "eval") == "eval" else None
        if score is not None and (r["arch"] not in best or (score, -r["index"]) > (best[r["arch"]][0],
                                                                                  -best[r["arch"]][1])):
            best[r["arch"]] = (score, r["index"], r)
    if not best:
        _fail(f"{path}: error: no evaluated architecture (status ok with a numeric metrics.{goal.metric}) to fit to")
    chosen = sorted(best.items(), key=lambda kv: (kv[1][0], -kv[1][1]), reverse=True)[:top]
    archs, other_hash = [], 0
    for arch, (_, index, r) in chosen:
        try:
            tree, _ = parse_either(arch, g.table)
        except ArchError as e:
            _fail(f"{path}: record {index}: error: not a derivation of {grammar} "
                  f"({str(e).splitlines()[0]}); give the search's grammar with --grammar")
        archs.append(show(tree))
        other_hash += r.get("grammar_hash") not in (None, g.hash)
    accs = [goal.value(r) or 0.0 for _, (_, _, r) in chosen]
    span = f"{goal.metric} {min(accs):.4f} to {max(accs):.4f}"
    header = [f"Fitted by `einc fit` from {path}: the K={len(chosen)} best of {len(best)} distinct architectures",
              f"evaluated (status ok; {span}). Dirichlet prior of strength "
              f"S={strength:g}",
              f"on the probabilities of {grammar}; counts pooled per rule (grammar/README.md, \"Learning the",
              "probabilities\")."]
    try:
        result = fit_grammar(text, str(gpath), archs, strength, header=header, library=library)
    except FitError as e:
        _fail(str(e) if ": error:" in str(e) else f"{gpath}: error: {e}")
    try:
        Path(output).write_text(result.text, encoding="utf-8")
    except OSError as e:
        _fail(f"{output}: error: cannot write: {e.strerror or type(e).__name__}")
    if len(chosen) < top:
        click.echo(f"note: only {len(chosen)} distinct evaluated architectures in the journal (asked for {top})")
    if other_hash:
        click.echo(f"note: {other_hash} of them were recorded with another grammar hash; they parse with {grammar}")
    click.echo(f"wrote {output}: {grammar} fitted to the {len(chosen)} best of {len(best)} "
               f"({span}), S={strength:g}")
    click.echo(f"spectral radius: grammar {result.rho_prior:.4f}, fitted {result.rho:.4f}")
    if result.shrink > 0:
        click.echo(f"shrunk towards the prior by t = {result.shrink:.4f} to keep rho <= 0.99 as written "
                   f"(the plain fit has rho = {result.rho_fit:.4f})")
    for line in result.notes:
        click.echo("  " + line)


def _search_plugins(config: Path) -> tuple[str, ...]:
    """The plugin files a search's config.json names (none when it names none or is unreadable)."""
    try:
        value = json.loads(config.read_text(encoding="utf-8")).get("plugins", ())
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return ()
    return tuple(v for v in value if isinstance(v, str)) if isinstance(value, list) else ()


def _search_goal(config: Path):
    """What the search recorded beside a journal optimised (accuracy when there is no config.json)."""
    from einc.runtime.goal import ACCURACY
    from einc.runtime.search import SearchConfig

    return SearchConfig.load(config).goal() if config.is_file() else ACCURACY


def _search_grammar(config: Path) -> str:
    """The grammar named in a search's config.json, or einspace when there is none."""
    if not config.is_file():
        return "einspace"
    try:
        value = json.loads(config.read_text(encoding="utf-8")).get("grammar", "einspace")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError) as e:
        _fail(f"{config}: error: cannot read the search configuration ({type(e).__name__}); give --grammar")
    if not isinstance(value, str):
        _fail(f"{config}: error: its grammar is not a name or path; give --grammar")
    return value


@main.command("draw")
@click.argument("arch")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="The picture to write: .svg or .png.")
@click.option("--grammar", "-g", default="einspace", show_default=True,
              help="A bundled grammar's name or the path of a .ein file.")
@_shape_option
@click.option("--depth", type=click.IntRange(0), default=None,
              help="Collapse modules deeper than K levels of the bracket tree into one node.")
@click.option("--title", default=None, help="A heading for the picture [default: the file's name].")
@_plugin_option
def draw_(arch: str, output: str, grammar: str, input_shape, depth, title, plugins: tuple[str, ...]) -> None:
    """Draw an architecture: its dataflow graph and its derivation tree (paper Figure 1 style).

    ARCH is a bracket-notation string or the path of a file holding one.
    """
    from . import load
    from .draw import draw

    text, source_path = read_arch_argument(arch)
    g = load(grammar, load_plugins(plugins))
    shape = input_shape or g.default_shape()
    if shape is None:
        raise click.UsageError(f'the grammar "{grammar}" declares no start shape; give --input')
    if Path(output).suffix.lower() not in (".svg", ".png"):
        raise click.BadParameter(f'"{output}": write a .svg or a .png', param_hint="-o")
    try:
        parsed = g.parse(text, shape)
    except ArchError as e:
        _fail(_located(e, source_path))
    path = draw(parsed, shape, output, depth=depth,
                title=title if title is not None else (Path(source_path).name if source_path else None))
    click.echo(f"wrote {path}", err=True)


def _export_onnx(gm, shape, path: str, arch) -> None:
    """``compile --onnx``: export, run with onnxruntime against torch, print the largest difference."""
    from .onnx import OPSET, compare, export_onnx

    export_onnx(gm, shape, path, arch=arch)
    agree = compare(gm, path, shape)
    click.echo(f"wrote {path}: ONNX opset {OPSET}, batch axis dynamic; onnxruntime vs torch on a batch of "
               f"{agree.batch}: largest difference {agree.max_abs:.3g} ({agree.max_rel:.3g} relative)", err=True)


if __name__ == "__main__":  # pragma: no cover
    main()
