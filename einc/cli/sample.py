"""``einc sample`` and ``einc stats``: architectures drawn from a grammar, and their sizes."""

from __future__ import annotations

import json
import sys

import click

from ._common import _plugin_option, _shape_option, load_plugins


def _budget_options(f):
    from ..sample import Budget

    d = Budget()
    for name, help_ in reversed([("max-params", "parameters"), ("max-flops", "FLOPs per sample"),
                                 ("max-activations", "activation elements per sample"),
                                 ("max-nodes", "derivation nodes"), ("max-depth", "derivation depth")]):
        f = click.option(f"--{name}", type=click.IntRange(1), default=getattr(d, name.replace("-", "_")),
                         show_default=True, help=f"Budget: most {help_}.")(f)
    return f


def _budget(kw):
    from ..sample import Budget

    return Budget(**{k: kw.pop(k) for k in list(kw) if k.startswith("max_")})


def _sampling_setup(grammar: str, input_shape, p_stop, plugins):
    from ..api import load
    from ..sample import with_stop_probability

    g = load(grammar, load_plugins(plugins))
    shape = input_shape or g.default_shape()
    if shape is None:
        raise click.BadParameter("the grammar declares no default shape; give --input", param_hint="--input")
    if p_stop is not None:
        from ..api import Grammar

        g = Grammar(with_stop_probability(g.table, p_stop))
    return g, shape


@click.command()
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

    from ..infer import infer
    from ..notation import show
    from ..sample import Sampler
    from ..tree import counts

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

    from ..api import build

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


@click.command()
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

    from ..sample import Sampler
    from ..stats import describe, table6_rows

    g, shape = _sampling_setup(grammar, input_shape, p_stop, plugins)
    sampler = Sampler(g.table, shape, _budget(kw))
    rng = random.Random(seed)
    trees = [sampler.sample(rng) for _ in range(count)]
    click.echo(f"{count} samples of {grammar} at input {','.join(map(str, shape))}")
    click.echo(describe(table6_rows(trees)))
