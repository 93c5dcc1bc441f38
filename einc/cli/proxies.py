"""``einc proxies``: how well each zero-cost proxy (einc.proxies) ranks a grammar's networks on a
dataset, against their accuracy after a short training (einc.runtime.proxy_study)."""

from __future__ import annotations

import json
import sys

import click

from einc.runtime.train_config import TrainConfig

from ._common import _plugin_option
from .sample import _budget, _budget_options

_TRAIN = TrainConfig()


@click.command()
@click.option("--grammar", default="einspace", show_default=True, help="A .ein file or a bundled grammar name.")
@click.option("--data", default="digits", show_default=True,
              help='"digits" (embedded, no download), an Unseen-NAS folder, or a .npz file.')
@click.option("-n", "count", type=click.IntRange(1), default=60, show_default=True, help="Networks to sample.")
@click.option("--epochs", type=click.IntRange(1), default=3, show_default=True, help="Epochs of each training.")
@click.option("--proxies", "names", default=None,
              help="Comma-separated proxies [default: all: params, flops, synflow, naswot, jacob_cov, grad_norm, "
                   "snip].")
@click.option("--proxy-batch", type=click.IntRange(2), default=64, show_default=True,
              help="Training samples in the one batch every proxy sees.")
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=_TRAIN.lr, show_default=True)
@click.option("--weight-decay", "weight_decay", type=click.FloatRange(0), default=_TRAIN.weight_decay,
              show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=_TRAIN.batch_size, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds sampling, the proxies' batch and weights.")
@click.option("--device", default=None, help="cpu, cuda, cuda:1 ... [default: cuda when present]")
@click.option("--time-limit", type=click.FloatRange(0, min_open=True), default=None,
              help="Seconds one training may take before it counts as failed.")
@click.option("--out", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Also write one JSON line per network (architecture, proxies, metric) to this file.")
@_budget_options
@_plugin_option
def proxies(grammar, data, count, epochs, names, proxy_batch, lr, weight_decay, batch_size, seed, device, time_limit,
            out, plugins, **kw) -> None:
    """Sample N networks of --grammar as `einc search` does (the same budgets), score each with every
    zero-cost proxy on one training batch, train each for --epochs, and print each proxy's Spearman
    correlation with the validation accuracy and its median time per network."""
    from einc.runtime.proxy_study import format_table, run

    train = TrainConfig(epochs=epochs, lr=lr, weight_decay=weight_decay, batch_size=batch_size, time_limit=time_limit)
    chosen = None if names is None else tuple(n.strip() for n in names.split(",") if n.strip())

    def show(net) -> None:
        what = f"{net.metric:.4g}" if net.metric is not None else f"failed ({net.reason})"
        click.echo(f"network {net.index + 1}/{count}: {what} after {net.train_seconds:.1f} s", err=True)

    study = run(grammar, data, count, train, seed=seed, budget=_budget(kw), names=chosen, proxy_batch=proxy_batch,
                device=device, plugins=tuple(plugins), on_network=show)
    if out is not None:
        with open(out, "w", encoding="utf-8") as f:
            for net in study.networks:
                f.write(json.dumps(net.as_dict()) + "\n")
    click.echo(format_table(study))
    if not any(n.metric is not None for n in study.networks):
        click.echo(f"error: every training failed; no proxy can be compared with {study.metric}", err=True)
        sys.exit(1)
