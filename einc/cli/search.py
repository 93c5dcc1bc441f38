"""``einc search`` (start, resume, stop) and ``einc report`` (a search folder's plot and summary)."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

import click

from ..runtime.search import STRATEGIES, SearchConfig
from ._common import METRICS, TASKS, _fail, _has_bracket, _plugin_option, _shape_option
from .sample import _budget_options

_D = SearchConfig()  # the defaults the flags show: SearchConfig is their one home


@click.command()
@click.option("--grammar", default=_D.grammar, show_default=True, help="A .ein file or a bundled grammar name.")
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
@click.option("--strategy", type=click.Choice(STRATEGIES), default=_D.strategy, show_default=True,
              help="Random search, regularised evolution, random sampling, or Bayesian optimisation (WL-kernel GP).")
@click.option("--seeds", "seed_files", multiple=True,
              help="Seeds of the evolution's population (repeatable): an architecture file, a bundled seed "
                   "(resnet18, vit, wrn16_4_published, ...), mix (the paper's RE(Mix): all four published) "
                   "or a bracket-notation string.")
@click.option("--budget", type=click.IntRange(1), default=_D.budget, show_default=True, help="Evaluations.")
@click.option("--epochs", type=click.IntRange(1), default=_D.epochs, show_default=True, help="Epochs per evaluation.")
@click.option("--final-epochs", type=click.IntRange(1), default=None,
              help="Epochs to retrain the best on train+valid [default: --epochs].")
@click.option("--fidelity", default=None, callback=lambda c, p, v: _epochs_list(v),
              help="Multi-fidelity: epochs per rung of successive halving, e.g. 1,3,9 (replaces --epochs).")
@click.option("--eta", type=click.IntRange(2), default=_D.eta, show_default=True,
              help="With --fidelity: the best 1/ETA of each rung is trained again for the next rung's epochs.")
@click.option("--population", type=click.IntRange(1), default=_D.population, show_default=True)
@click.option("--tournament", type=click.IntRange(1), default=_D.tournament, show_default=True)
@click.option("--prefilter", type=click.IntRange(1), default=_D.prefilter, show_default=True, metavar="M",
              help="Evolution draws M children per proposal and trains the one a surrogate fitted to the scores "
                   "so far predicts best (a GP on the derivation tree's WL features and, on data, its synflow).")
@click.option("--warmup", default=None, metavar="PROXY:K",
              help="Seed the initial population (re, bo) with the best of K samples by a zero-cost proxy on one "
                   "minibatch: params, flops, synflow, naswot, jacob_cov, grad_norm or snip.")
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=_D.lr, show_default=True)
@click.option("--weight-decay", "weight_decay", type=click.FloatRange(0), default=_D.weight_decay, show_default=True,
              help="SGD weight decay (the paper's per-task values: docs/tasks.md).")
@click.option("--batch-size", type=click.IntRange(1), default=_D.batch_size, show_default=True)
@click.option("--seed", type=int, default=_D.seed, show_default=True, help="Seeds sampling, mutation and training.")
@click.option("--device", default=None, help="cpu, cuda, cuda:1 ... [default: cuda when present]")
@click.option("--workers", type=click.IntRange(1), default=_D.workers, show_default=True,
              help="Candidates trained at once, each in its own process; the results do not depend on it.")
@click.option("--lag", type=click.IntRange(0), default=_D.lag, show_default=True,
              help="Proposal k is made from the results of proposals before k - LAG, in proposal order, so a "
                   "seed gives one journal whatever --workers is; more than LAG / 2 workers may wait.")
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
    from einc.runtime.stop import stop_on_signals
    from einc.runtime.study import format_result, run

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
                          input_shape=input_shape, lag=lag, **kw)
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
            result = run(config, out, resume=resume, on_progress=show, evaluator=evaluator)  # einc.search's path
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
            click.echo(format_result(result, config))
            if result.best is None:
                _fail(f"{out}: error: every evaluation failed "
                      f"({', '.join(sorted({str(t.reason).split(':')[0] for t in result.trials}))}); "
                      "nothing to report as best")
            return
        summary = result.summary
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


@click.command()
@click.argument("out", type=click.Path(file_okay=False, exists=True))
def report(out: str) -> None:
    """Rewrite OUT's plot.png, summary.json and report.html from its journal (also while the search runs)."""
    from einc.runtime.search import report_folder

    click.echo(report_folder(out))
    click.echo(f"  page: {Path(out) / 'report.html'}")


def _seeds(values: tuple[str, ...]) -> list[tuple[str, str]]:
    """(name, text) of each --seeds value: a file (named by its stem), else a bundled seed or group
    name, else bracket-notation text (one with a bracket, "=" or ","; a bare word is taken for a
    seed name) named inlineN, N its place among the values; the search parses it like a file's."""
    from ..seeds import named_seeds, seed_names

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
