"""RayEvaluator and ``einc search --ray`` on a two-node Ray cluster made on this machine (1 CPU per node).

One cluster serves the whole module (starting one costs ~10 s on two cores); each test starts
its own actors (a few seconds: they import torch). ``ray`` missing is simulated, so that test
runs without the extra too.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from einc.cli import main
from einc.runtime.workers import EvaluatorError, Job

import _jobs

pytestmark = pytest.mark.slow  # a Ray cluster and its actors: scheduled first (tests/conftest.py)

SEARCH = ["--data", "digits10", "--strategy", "rs", "--epochs", "1", "--batch-size", "64",
          "--max-params", "20000", "--max-flops", "2000000", "--seed", "1"]


@pytest.fixture(scope="module")
def cluster():
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args=dict(num_cpus=1, include_dashboard=False))
    try:
        c.add_node(num_cpus=1)
        ray.init(address=c.address, log_to_driver=False, logging_level=logging.WARNING)
        c.wait_for_nodes()
        # tests/ is not on the workers' path: ship the job functions by value
        ray.cloudpickle.register_pickle_by_value(_jobs)
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


def _records(out: Path, kind: str = "eval") -> list[dict]:
    lines = (out / "journal.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("kind") == kind]


def test_evaluator_outcomes_failures_and_worker_death(cluster):
    from einc.runtime.cluster import RayEvaluator

    with RayEvaluator(workers=2, retries=1, time_limit=2) as ev:
        assert (ev.cpus_per_eval, ev.gpus_per_eval) == (1.0, 0.0)
        while any(slot.ready is not None for slot in ev._slots):  # both actors started: one on each node
            ev._wait()
        assert len({slot.name.split("/")[-1] for slot in ev._slots}) == 2
        for key, fn, kw in [("sq", _jobs.square, {"x": 3}), ("boom", _jobs.boom, {}),
                            ("kill", _jobs.self_kill, {}), ("np", _jobs.numpy_result, {}),
                            ("slow", _jobs.sleep, {"seconds": 60})]:
            ev.submit(Job(key, fn, kw))
        assert ev.pending == 5
        seen = {}
        for outcome in ev.results():
            seen[outcome.key] = outcome
            if outcome.key == "sq":
                ev.submit(Job("late", _jobs.square, {"x": 4}))  # submitting while iterating
        assert ev.pending == 0 and ev.resubmitted == 1
    assert seen["sq"].ok and seen["sq"].result["y"] == 9 and seen["late"].result["y"] == 16
    assert seen["np"].result == {"acc": 0.5, "n": 3}
    assert seen["boom"].reason == "ValueError: bad candidate" and "Traceback" in seen["boom"].detail
    kill = seen["kill"]  # killed by SIGKILL twice: the first try and its one retry
    assert kill.status == "failed" and kill.reason.startswith("WorkerDied: the Ray worker died")
    assert "tried 2 times" in kill.reason
    assert seen["slow"].reason == "Timeout: time limit of 2s exceeded; worker killed"
    assert 2 <= seen["slow"].seconds < 10
    assert all(o.worker.startswith("ray-") and o.finished >= o.started > 0 for o in seen.values())
    deadline = time.time() + 10  # closing freed the actors' CPUs
    while ray_cpus() < 2 and time.time() < deadline:
        time.sleep(0.1)
    assert ray_cpus() == 2


def ray_cpus() -> float:
    import ray

    return ray.available_resources().get("CPU", 0.0)


def test_impossible_settings_are_one_line(cluster):
    from einc.runtime.cluster import RayEvaluator

    with pytest.raises(EvaluatorError, match="no node of the Ray cluster has that many GPUs"):
        RayEvaluator(workers=1, gpus_per_eval=1)
    with pytest.raises(EvaluatorError, match="fraction of one GPU or a whole number"):
        RayEvaluator(workers=1, gpus_per_eval=1.5)
    r = CliRunner().invoke(main, ["search", "--ray", "--gpus-per-eval", "2", "--out", "/nonexistent/x"])
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1 and "GPUs" in r.output


def test_search_with_ray_workers_then_resume(cluster, tmp_path):
    out = tmp_path / "run"
    r = CliRunner().invoke(main, ["search", "--ray", "--workers", "2", "--budget", "4", "--out", str(out), *SEARCH])
    assert r.exit_code == 0, r.output
    evals = _records(out)
    assert len(evals) == 4 and all(e["status"] == "ok" for e in evals)
    assert all(e["worker"].startswith("ray-") for e in evals)
    assert len(_records(out, "final")) == 1 and _records(out, "final")[0]["status"] == "ok"
    saved = json.loads((out / "config.json").read_text())
    assert saved["workers"] == 2 and not {"ray", "ray_address", "gpus_per_eval", "retries"} & set(saved)
    # execution settings apply on resume too; a finished search has nothing left to train
    r = CliRunner().invoke(main, ["search", "--ray", "--retries", "0", "--resume", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert len(_records(out)) == 4
    # the same command on one local worker writes the same journal, timing and worker names aside
    r = CliRunner().invoke(main, ["search", "--workers", "1", "--budget", "4", "--out", str(tmp_path / "local"),
                                  *SEARCH])
    assert r.exit_code == 0, r.output
    timing = ("started", "finished", "seconds", "timing", "worker")
    for kind in ("proposal", "eval", "final"):
        assert [{k: v for k, v in e.items() if k not in timing} for e in _records(out, kind)] == \
            [{k: v for k, v in e.items() if k not in timing} for e in _records(tmp_path / "local", kind)]


def test_a_plugin_grammar_travels_without_a_shared_filesystem(cluster, tmp_path):
    from einc.runtime.candidate import evaluate
    from einc.runtime.cluster import RayEvaluator

    plugin = tmp_path / "double.py"
    plugin.write_text("from einc.ops import Op\n\n\ndef _same(features):\n    return features\n\n\n"
                      "def _lower(ctx, nodes, features):\n    return [ctx.call('torch.mul', nodes[0], 2.0)]\n\n\n"
                      "OPS = [Op('double', 'computation', (), _same, lower=_lower)]\n")
    grammar = tmp_path / "g.ein"
    grammar.write_text("start S(shape=(1, 8, 8))\nS -> sequential: M M\nM -> double | relu | linear(d in {8})\n")
    train = dict(epochs=1, lr=0.04, weight_decay=3e-4, batch_size=64, seed=0, time_limit=None, amp=None,
                 graphs=None)
    with RayEvaluator(workers=1) as ev:
        ev.submit(Job("0", evaluate, dict(arch="sequential(double, linear(d=8))", grammar=str(grammar),
                                          plugins=(str(plugin),), data="digits10", data_seed=0, train=train,
                                          device=None), shared=("grammar", "data")))
        plugin.rename(tmp_path / "gone.py")  # the workers never read it: the compiled grammar carries it
        grammar.unlink()
        (outcome,) = ev.results()
    assert outcome.ok, outcome.detail
    assert 0 <= outcome.result["metrics"]["val_acc"] <= 1


def test_without_ray_the_search_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails
    r = CliRunner().invoke(main, ["search", "--ray", "--budget", "1", "--out", str(tmp_path / "x")])
    assert r.exit_code == 2
    assert r.output.strip() == "einc search --ray needs Ray: pip install 'einc[ray]'"
    assert not (tmp_path / "x").exists()


def test_ray_settings_need_ray(tmp_path):
    r = CliRunner().invoke(main, ["search", "--retries", "2", "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "apply to --ray only" in r.output


def test_a_runtime_shut_down_under_the_evaluator_is_cluster_lost(cluster):
    """In-process, Python sees the loss only when the runtime is shut down: one ClusterLost, no fresh Ray started."""
    import ray

    from einc.runtime.cluster import ClusterLost, RayEvaluator

    try:
        with RayEvaluator(workers=1, resume="einc search --out X --resume --ray") as ev:
            ev.submit(Job("a", _jobs.sleep, {"seconds": 30.0}))
            while ev._slots[0].job is None or ev._slots[0].pid is None:
                ev._wait()
                ev._dispatch()
            ray.shutdown()
            with pytest.raises(ClusterLost) as lost:
                list(ev.results())
            assert not ray.is_initialized()  # ray.wait would have started a new local runtime
        assert not ray.is_initialized()  # nor did close()
        assert str(lost.value) == ("error: the Ray runtime was shut down during the search; the evaluations running "
                                   "on it are lost; continue with: einc search --out X --resume --ray")
        assert lost.value.resume == "einc search --out X --resume --ray"
    finally:
        if not ray.is_initialized():
            ray.init(address=cluster.address, log_to_driver=False, logging_level=logging.WARNING)
    deadline = time.time() + 10  # the driver that owned the actor left: Ray killed it
    while ray_cpus() < 2 and time.time() < deadline:
        time.sleep(0.1)
    assert ray_cpus() == 2


def test_a_search_whose_ray_driver_dies_ends_in_one_line(cluster, tmp_path):
    """``einc search --ray``'s Ray driver is a child process: Ray ends it when the raylet it talks to (or the head)
    dies, which no Python in it can catch. Its death (simulated by SIGKILL) is one line with the resume command,
    the exit code 1, and an intact journal; Ray kills the dead driver's actors."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "einc.cli", "search", "--ray", cluster.address, "--retries", "0", "--budget", "500",
           "--out", str(out), *SEARCH]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        driver = None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            # results enter the journal in proposal order, `lag` proposals late: a proposal shows the search runs
            proposed = _records(out, "proposal") if (out / "journal.jsonl").exists() else []
            driver = driver or _child(proc.pid, "einc.runtime.cluster")
            if proposed and driver:
                break
            time.sleep(0.2)
        assert driver and proposed, proc.communicate()
        os.kill(driver, signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    last = err.strip().splitlines()[-1]
    assert proc.returncode == 1, err
    assert last.startswith("error: lost the Ray cluster: the search's Ray driver process was killed by SIGKILL")
    assert last.endswith(f"; continue with: einc search --out {out} --resume --ray {cluster.address} --retries 0")
    assert "Traceback" not in err and "ray" not in err.replace(last, "").lower().replace("training", "")
    log = last.split("Ray's log: ")[1].split(";")[0]
    assert Path(log).exists()  # kept: it says what went wrong
    Path(log).unlink()
    assert _records(out, "proposal") and all(r["status"] == "ok" for r in _records(out))  # whole, readable records
    deadline = time.time() + 20
    while ray_cpus() < 2 and time.time() < deadline:
        time.sleep(0.1)
    assert ray_cpus() == 2


def _child(pid: int, marker: str) -> int | None:
    """A child process of ``pid`` whose command line contains ``marker``."""
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid \
                    and marker in (entry / "cmdline").read_text():
                return int(entry.name)
        except (OSError, IndexError, ValueError):
            continue
    return None


def test_a_node_that_dies_mid_evaluation(cluster, tmp_path):  # last: the cluster keeps one node after it
    """The job on the dead node runs again on the head and succeeds (a killed actor's job takes the same path).

    The jobs run until a gate file appears, so under load neither can finish before the node dies."""
    from einc.runtime.cluster import RayEvaluator

    gate = tmp_path / "gate"
    with RayEvaluator(workers=2, retries=1) as ev:
        ev.submit(Job("a", _jobs.wait_for, {"path": str(gate)}))
        ev.submit(Job("b", _jobs.wait_for, {"path": str(gate)}))
        deadline = time.monotonic() + 120
        while sum(s.job is not None and s.pid is not None for s in ev._slots) < 2:
            assert time.monotonic() < deadline, "the two actors never ran a job each"
            ev._wait()  # starts the actors and dispatches, as results() does
            ev._dispatch()
        cluster.remove_node(next(iter(cluster.worker_nodes)))
        gate.touch()
        outcomes = {o.key: o for o in ev.results()}
        assert ev.resubmitted == 1
    assert all(o.ok for o in outcomes.values()), outcomes
    assert len({o.worker for o in outcomes.values()}) == 1  # both ran on the head, one after the other
