"""Tasks beyond classification (runtime/task.py): metrics, task inference, heads, training, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from sklearn.metrics import average_precision_score, r2_score, roc_auc_score

import einc
from einc.cli import main
from einc.emit import emit, load_source
from einc.errors import EinError
from einc.runtime.data import DataError, Dataset, load_data, load_npz, load_unseen_nas
from einc.runtime.goal import ACCURACY, Goal
from einc.runtime.journal import Journal
from einc.runtime.report import format_summary
from einc.runtime.search import SearchConfig, SearchError, run_search
from einc.runtime.task import Task, TaskError, auroc_labels, auroc_pixels, mean_average_precision, r2, rel_l2
from einc.runtime.train import TrainConfig, _score, retrain_and_test, train_and_score
from einc.runtime.train_step import TrainError

from _builds import EXAMPLES
from conftest import FakeEvaluator

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import make_tasks  # noqa: E402

G = einc.load("einspace")
SMALL = (EXAMPLES / "resnet_small.arch").read_text()


# --------------------------------------------------------------------------- metrics


def test_whole_split_metrics_match_scikit_learn():
    rng = np.random.default_rng(0)
    y = (rng.random((200, 4)) < 0.3).astype(np.float32)
    s = np.round(rng.normal(size=(200, 4)) + y, 1)  # rounded: ties, which both must rank alike
    assert auroc_labels(s, y) == pytest.approx(roc_auc_score(y, s, average="macro"))
    assert mean_average_precision(s, y) == pytest.approx(average_precision_score(y, s, average="macro"))
    assert auroc_pixels(s, y) == pytest.approx(roc_auc_score(y.ravel(), s.ravel()))
    t = rng.normal(size=(50, 3))
    p = t + rng.normal(size=(50, 3))
    assert r2(p, t) == pytest.approx(r2_score(t, p))
    assert rel_l2(np.zeros_like(t), t) == pytest.approx(1.0) and rel_l2(t, t) == 0.0


def test_auroc_needs_both_classes():
    with pytest.raises(TaskError, match="AUROC is undefined"):
        auroc_pixels(np.ones(4), np.zeros(4))


def test_tasks_know_their_key_direction_and_default():
    assert Task("classification", None, (10,)).goal == ACCURACY
    assert Task("classification", "error", (10,)).goal == Goal("val_error", minimize=True)
    assert Task("dense", None, (1, 85, 85)).goal == Goal("val_rel_l2", minimize=True)
    assert Task("dense", "auroc", (1, 8, 8)).goal == Goal("val_auroc", minimize=False)
    assert Task("multilabel", None, (5,)).metric == "map" and Task("regression", None, (1,)).metric == "mse"
    assert Task("regression", "r2", (2,)).test_key == "test_r2"
    with pytest.raises(TaskError, match='metric "auroc" does not apply to a regression task; choose mse or mae or r2'):
        Task("regression", "auroc", (1,))
    with pytest.raises(TaskError, match="output shape"):
        Task("dense", None, (5,))


# --------------------------------------------------------------------------- data


def splits(x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    n = len(x) // 3
    return {f"{s}_{k}": v[i * n:(i + 1) * n] for i, s in enumerate(("train", "valid", "test"))
            for k, v in (("x", x), ("y", y))}


def npz(tmp_path: Path, x: np.ndarray, y: np.ndarray, name: str = "d") -> Path:
    path = tmp_path / f"{name}.npz"
    np.savez(path, **splits(x, y))
    return path


def test_the_training_targets_decide_the_task(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.normal(size=(30, 1, 4, 4)).astype(np.float32)
    seq = rng.normal(size=(30, 6, 3)).astype(np.float32)
    cases = [(img, np.arange(30) % 3, "classification", (3,)),
             (img, rng.normal(size=(30, 2)), "regression", (2,)),
             (img, rng.normal(size=(30, 2, 5, 5)), "dense", (2, 5, 5)),
             (seq, np.arange(30) % 4, "classification", (4,)),
             (seq, rng.normal(size=(30, 6, 2)), "dense", (6, 2))]
    for i, (x, y, kind, out) in enumerate(cases):
        d = load_npz(npz(tmp_path, x, y, str(i)))
        assert d.task is not None and (d.task.kind, d.output_shape) == (kind, out)
        assert d.train_y.dtype == (np.int64 if kind == "classification" else np.float32)
    multi = npz(tmp_path, img, (rng.random((30, 5)) < 0.5).astype(np.int64), "multi")
    assert load_npz(multi).task.kind == "regression"  # multi-label only when asked for
    d = load_npz(multi, task="multilabel", metric="auroc")
    assert d.task == Task("multilabel", "auroc", (5,)) and d.train_y.dtype == np.float32
    one = load_npz(npz(tmp_path, img, rng.normal(size=30), "one"), task="regression")
    assert one.output_shape == (1,) and one.train_y.shape == (10, 1)


@pytest.mark.parametrize("y, kwargs, message", [
    (np.full(30, 0.5), {}, r"labels must be integers; sample 0 has label 0\.5"),
    (np.full((30, 2), 0.5), {"task": "multilabel"}, r"multi-label targets must be 0 or 1; sample 0"),
    (np.zeros((30, 2, 2)), {}, r"targets must be a vector of N class indices, N x K values, or have the inputs' "
                               r"rank \(4\) for a dense task; got shape \(10, 2, 2\)"),
    (np.zeros((30, 2, 2)), {"task": "regression"}, r"regression targets must be N x K; got shape \(10, 2, 2\)$"),
    (np.zeros((30, 1, 4, 4)), {"task": "dense", "metric": "auroc"}, None),
    (np.full((30, 1, 4, 4), 2.0), {"task": "dense", "metric": "auroc"}, "targets scored by AUROC must be 0 or 1"),
    (np.arange(30) % 3, {"metric": "rel-l2"}, r'metric "rel-l2" does not apply to a classification task'),
    (np.arange(30) % 3, {"task": "dense"}, r"dense targets must have the inputs' rank \(4: N x C x H x W\)"),
    (np.zeros((30, 2)), {"task": "regression", "metric": "map"}, r'metric "map" does not apply to a regression'),
])
def test_bad_targets_are_one_located_line(tmp_path, y, kwargs, message):
    path = npz(tmp_path, np.zeros((30, 1, 4, 4), np.float32), y)
    if message is None:
        assert load_npz(path, **kwargs).task.metric == kwargs["metric"]
        return
    with pytest.raises(DataError, match=message) as err:
        load_npz(path, **kwargs)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_splits_must_agree_on_the_target_shape(tmp_path):
    arrays = splits(np.zeros((30, 1, 4, 4), np.float32), np.zeros((30, 2), np.float32))
    arrays["test_y"] = np.zeros((10, 3), np.float32)
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(DataError, match=r'"test_y": error: targets have shape \(3,\) per sample but "train_y"'):
        load_npz(tmp_path / "d.npz")


def test_sequences_in_the_unseen_nas_layout_are_col_mode(tmp_path):
    path = make_tasks.write_all(tmp_path, sizes=(30, 10, 10))["sequence"]
    d = load_unseen_nas(path)
    assert d.input_shape == (16, 8) and d.num_classes == 4 and d.task.kind == "classification"
    assert abs(float(d.train_x[..., 0].mean())) < 1e-5  # normalised per channel (the last axis)
    assert einc.build(G.sample(d.input_shape, seed=1, budget=einc.Budget(max_params=50_000)),
                      d.input_shape, output_shape=d.output_shape)(torch.from_numpy(d.valid_x[:2])).shape == (2, 4)


def test_with_task_converts_once_and_keeps_the_arrays():
    d = load_data("digits10")
    r = d.with_task("regression")
    assert r is d.with_task("regression") and d.with_task(None, None) is d
    assert r.output_shape == (1,) and r.train_y.dtype == np.float32 and r.train_x is d.train_x
    assert "task='regression'" in repr(r)


# --------------------------------------------------------------------------- heads


@pytest.mark.parametrize("arch, shape, out", [
    (SMALL, (2, 8, 8), (1, 8, 8)),                     # Im features, image target (Darcy's form)
    (SMALL, (2, 8, 8), (3, 20, 20)),                   # upsampled by the adaptive pooling
    (SMALL, (2, 8, 8), (5, 4)),                        # Im features, sequence target: positions pooled
    ("routing(im2col(k=4, s=4, p=0), linear(d=16), identity)", (3, 16, 16), (2, 16, 16)),  # Col features
    ("sequential(linear(d=32), relu)", (16, 8), (4, 3)),                                   # Col in and out
    ("sequential(linear(d=32), relu)", (16, 8), (1, 5, 5)),
    ("sequential(linear(d=32), relu)", (16, 8), (6,)),
])
def test_the_dense_head_builds_emits_and_runs(arch, shape, out):
    model = einc.build(G.parse(arch, shape), shape, output_shape=out)
    assert model.meta["einc"]["output_shape"] == out
    x = torch.randn(2, *shape)
    net = load_source(emit(model), "head")["Net"]()
    net.load_state_dict(model.state_dict())
    assert model(x).shape == (2, *out) and torch.allclose(net(x), model(x), atol=1e-5)


def test_a_vector_output_shape_is_the_classification_head():
    arch = G.parse(SMALL, (2, 8, 8))
    torch.manual_seed(0)
    a = einc.build(arch, (2, 8, 8), num_classes=19)
    torch.manual_seed(0)
    b = einc.build(arch, (2, 8, 8), output_shape=(19,))
    assert emit(a) == emit(b) and all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    with pytest.raises(EinError, match="disagree"):
        einc.build(arch, (2, 8, 8), num_classes=3, output_shape=(4,))
    with pytest.raises(EinError, match=r"\(K,\), \(C, H, W\) or \(S, D\)"):
        einc.build(arch, (2, 8, 8), output_shape=(1, 2, 3, 4))


def test_compile_builds_any_head(tmp_path):
    run = CliRunner().invoke
    out = tmp_path / "darcy.py"
    r = run(main, ["compile", SMALL, "--input", "1,85,85", "--task", "dense", "--output-shape", "1,85,85",
                   "-o", str(out)])
    assert r.exit_code == 0, r.output
    net = load_source(out.read_text(), "darcy")["Net"]()
    assert net(torch.randn(1, 1, 85, 85)).shape == (1, 1, 85, 85)
    r = run(main, ["compile", SMALL, "--input", "2,8,8", "--task", "multilabel", "--output-shape", "5"])
    assert r.exit_code == 0, r.output
    same = [run(main, ["compile", SMALL, "--input", "2,8,8", *a]).output for a in (["--classes", "7"],
                                                                                   ["--output-shape", "7"])]
    assert same[0] == same[1]
    for args, message in ((["--task", "dense", "--classes", "3"], "--task dense takes --output-shape C,H,W"),
                          (["--task", "regression"], "--task regression needs the head's output"),
                          (["--classes", "3", "--output-shape", "4"], "disagree")):
        r = run(main, ["compile", SMALL, "--input", "2,8,8", *args])
        assert r.exit_code == 2 and message in r.output, r.output


# --------------------------------------------------------------------------- training and scoring


def tiny_set(kind: str, n: int = 48) -> Dataset:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(n, 1, 4, 4)).astype(np.float32)
    y = {"dense": x * 2, "regression": x.mean(axis=(2, 3)),
         "multilabel": (x.reshape(n, -1)[:, :3] > 0).astype(np.float32)}[kind]
    m = n // 2
    path_free = {"train_x": x[:m], "train_y": y[:m], "valid_x": x[m:], "valid_y": y[m:], "test_x": x[m:],
                 "test_y": y[m:]}
    from einc.runtime.data import KEYS, _finish

    return _finish(kind, path_free, {k: k for k in KEYS}, None, True, task=kind)


@pytest.mark.parametrize("kind, key", [("dense", "val_rel_l2"), ("regression", "val_mse"), ("multilabel", "val_map")])
def test_train_and_score_use_the_task(kind, key):
    data = tiny_set(kind)
    arch = G.parse("sequential(routing(im2col(k=3, s=1, p=1), linear(d=16), col2im), relu)", (1, 4, 4))
    torch.manual_seed(0)
    model = einc.build(arch, (1, 4, 4), output_shape=data.output_shape)
    metrics = train_and_score(model, data, TrainConfig(epochs=2, batch_size=16, lr=0.01), "cpu")
    assert set(metrics) == {key, "train_loss", "epochs", "amp", "step"} and np.isfinite(metrics[key])
    final = retrain_and_test(model, data, TrainConfig(epochs=1, batch_size=16, lr=0.01), "cpu")
    assert "test_" + key[4:] in final


def test_scores_are_over_the_whole_split_not_per_batch():
    data = tiny_set("multilabel")
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    x, y = torch.from_numpy(data.valid_x), torch.from_numpy(data.valid_y)
    task = Task("multilabel", "auroc", (3,))
    whole = auroc_labels(model(x).detach().numpy(), data.valid_y)
    for batch in (5, 100):
        assert _score(model, x, y, task, TrainConfig(batch_size=batch), "cpu", None) == pytest.approx(whole)


def test_a_wrong_head_is_a_train_error():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 5))
    with pytest.raises(TrainError, match=r"expected \(batch, dense target\) = \(24, 1, 4, 4\)"):
        train_and_score(model, tiny_set("dense"), TrainConfig(epochs=1), "cpu")


# --------------------------------------------------------------------------- search configuration and CLI


def test_search_config_takes_the_task_and_its_goal(tmp_path):
    path = make_tasks.write_all(tmp_path, sizes=(12, 6, 6))["darcy"]
    assert SearchConfig(data=str(path)).goal() == Goal("val_rel_l2", minimize=True)
    assert SearchConfig(data=str(path), metric="mse").goal() == Goal("val_mse", minimize=True)
    assert SearchConfig(data="digits10").goal() == ACCURACY
    assert SearchConfig(data="digits10", metric="error").goal() == Goal("val_error", minimize=True)
    with pytest.raises(SearchError, match='metric "r2" does not apply to a dense task'):
        SearchConfig(data=str(path), task="dense", metric="r2")
    r = CliRunner().invoke(main, ["search", "--data", "digits10", "--metric", "rel-l2", "--out", str(tmp_path / "o")])
    assert r.exit_code == 1 and 'metric "rel-l2" does not apply to a classification task' in r.output


TINY_SEARCH = ["--strategy", "rs", "--budget", "2", "--epochs", "1", "--batch-size", "32", "--max-params", "20000",
               "--max-flops", "2000000", "--seed", "0"]


@pytest.mark.slow
@pytest.mark.parametrize("name, extra, line", [
    ("sequence", [], "validation accuracy"),
    ("scalar", [], "validation MSE"),
    ("darcy", ["--strategy", "re", "--seeds", "routing(im2col(k=3, s=1, p=1), linear(d=16), col2im)",
               "--population", "2", "--tournament", "1", "--epochs", "3", "--batch-size", "16"],
     "validation relative l2"),
    ("labels", ["--task", "multilabel", "--metric", "auroc"], "validation AUROC"),
])
def test_each_kind_searches_from_the_cli(tmp_path, name, extra, line):
    data = make_tasks.write_all(tmp_path / "data", sizes=(60, 30, 30))[name]
    out = tmp_path / "run"
    p = subprocess.run([sys.executable, "-m", "einc.cli", "search", "--data", str(data), *TINY_SEARCH, *extra,
                        "--out", str(out)], capture_output=True, text=True, timeout=300, check=False)
    assert p.returncode == 0, p.stderr
    assert line in p.stdout
    summary = json.loads((out / "summary.json").read_text())
    key = summary["metric_key"]
    assert summary["metric"] in p.stdout or line in p.stdout
    assert summary[f"best_{key}"] is not None and (out / "best.py").exists() and (out / "plot.png").exists()
    if name == "darcy":
        assert summary["minimize"] and summary["best_val_rel_l2"] < 1.0  # beats predicting zeros


def test_search_takes_the_papers_training_flags(tmp_path, monkeypatch):
    import einc.runtime.study as study_module  # einc search runs einc.search's path: study.run -> run_search

    seen = []

    def fake(config, out, **kw):
        seen.append(config)
        raise KeyboardInterrupt("SIGINT")

    monkeypatch.setattr(study_module, "run_search", fake)
    args = ["search", "--data", "digits10", "--metric", "error", "--weight-decay", "5e-4", "--lr", "0.1",
            "--final-epochs", "200", "--out", str(tmp_path / "o")]
    CliRunner().invoke(main, args)
    (config,) = seen
    assert (config.weight_decay, config.lr, config.metric, config.final_epochs) == (5e-4, 0.1, "error", 200)


class MinimisedFake(FakeEvaluator):
    """The fake evaluator's scores journaled as a dense task's relative l2 (lower is better)."""

    def results(self):
        for outcome in super().results():
            if outcome.result is not None:
                m = outcome.result["metrics"]
                m["test_rel_l2" if "test_acc" in m else "val_rel_l2"] = m.pop("test_acc", None) or m.pop("val_acc")
            yield outcome


def test_a_minimised_task_ranks_promotions_and_the_best_from_its_goal(tmp_path):
    data = make_tasks.write_all(tmp_path / "data", sizes=(12, 6, 6))["darcy"]
    config = SearchConfig(data=str(data), strategy="rs", budget=24, fidelity=(1, 3), eta=3, max_params=100_000,
                          max_flops=5_000_000, max_activations=200_000, seed=3)
    summary = run_search(config, tmp_path / "run", evaluator=MinimisedFake(2))
    evals = [r for r in Journal(tmp_path / "run" / "journal.jsonl").records() if r["kind"] == "eval"]
    value = {r["arch"]: r["metrics"]["val_rel_l2"] for r in evals if r.get("rung", 0) == 0}
    promoted = {r["arch"] for r in evals if r.get("origin") == "promotion"}
    assert promoted and summary["promotions"] == len(promoted)
    # the promoted are the low (good) values of the first rung: none of them is among the worst third
    worst = sorted(value.values())[-len(value) // 3:]
    assert not any(value[a] in worst for a in promoted)
    top = [r["metrics"]["val_rel_l2"] for r in evals if r.get("rung", 0) == 1]
    assert summary["best_val_rel_l2"] == min(top) and summary["minimize"] and summary["metric"] == "rel-l2"
    assert summary["pareto"][0]["val_rel_l2"] >= summary["pareto"][-1]["val_rel_l2"]  # more params buy lower error
    assert "validation relative l2" in format_summary(summary)


def test_an_x_y_pair_takes_any_task(tmp_path):
    rng = np.random.default_rng(2)
    np.save(tmp_path / "x.npy", rng.normal(size=(40, 12, 3)).astype(np.float32))  # sequences
    np.save(tmp_path / "y.npy", rng.normal(size=40))
    spec = f"{tmp_path / 'x.npy'},{tmp_path / 'y.npy'}"
    with pytest.raises(DataError, match=r"y\.npy: error: labels must be integers"):
        load_data(spec)
    d = load_data(spec, task="regression", metric="r2")
    assert d.input_shape == (12, 3) and d.task == Task("regression", "r2", (1,)) and len(d.train_y) == 28
    np.save(tmp_path / "y.npy", rng.normal(size=(40, 12, 2)))
    assert load_data(spec).task == Task("dense", "rel-l2", (12, 2))


def test_a_remote_backend_ships_the_data_as_the_jobs_task(tmp_path):
    """A float vector of targets is only regression when told (--task): the dataset a Ray evaluator
    loads once and ships must be loaded as the job's task, or it fails as classification."""
    from einc.runtime.candidate import evaluate
    from einc.runtime.cluster import RayEvaluator
    from einc.runtime.search import SHARED
    from einc.runtime.workers import Job

    path = npz(tmp_path, np.random.default_rng(0).normal(size=(30, 1, 4, 4)).astype(np.float32),
               np.linspace(0, 1, 30).astype(np.float32))
    ev = RayEvaluator.__new__(RayEvaluator)  # no Ray needed: the object store is this dict
    ev.gpus_per_eval, ev._put = 0.0, lambda key, load: load()
    kwargs = ev._prepare(Job("0", evaluate, {"data": str(path), "data_seed": 0, "task": "regression",
                                             "metric": "mae", "grammar": "einspace", "device": None}, SHARED))
    assert kwargs["data"].task.kind == "regression" and kwargs["data"].task.metric == "mae"
    assert kwargs["device"] == "cpu"
