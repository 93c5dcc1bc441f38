"""One candidate trained with the paper's recipe on tiny synthetic data, on the CPU."""

from __future__ import annotations

import contextlib
import gc
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from einc.runtime import train as train_module
from einc.runtime.data import Dataset
from einc.runtime.train import (
    AMP_MIN_FLOPS,
    NonFiniteLoss,
    OutOfMemory,
    TimeLimitExceeded,
    TrainConfig,
    TrainError,
    clear_device_data,
    count_flops,
    device_split,
    limit_memory,
    pick_device,
    retrain_and_test,
    settings_note,
    train_and_score,
    use_amp,
    use_graphs,
    warm_up,
)
from einc.runtime.train_step import WARMUP, TrainStep, cosine_schedule


def test_the_session_runs_torch_on_one_thread():
    """tests/conftest.py's setting (tiny ops spin-wait across threads on a shared 2-core machine)."""
    assert torch.get_num_threads() == 1


def blobs(n: int = 120, seed: int = 0) -> Dataset:
    """Two classes, separable by the sign of the mean pixel: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    splits = {}
    for split, size in (("train", n), ("valid", n // 4), ("test", n // 4)):
        y = rng.integers(0, 2, size=size)
        x = rng.normal(size=(size, 1, 4, 4)).astype(np.float32) + (2 * y - 1)[:, None, None, None]
        splits[split] = (x.astype(np.float32), y.astype(np.int64))
    return Dataset("blobs", *splits["train"], *splits["valid"], *splits["test"], num_classes=2,
                   input_shape=(1, 4, 4))


def tiny(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))


class Diverges(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1)) * float("nan")


def test_one_epoch_returns_scores():
    scores = train_and_score(tiny(), blobs(), TrainConfig(epochs=1, batch_size=32), "cpu")
    assert set(scores) == {"val_acc", "train_loss", "epochs", "amp", "step"}
    assert scores["amp"] is False and scores["step"] == "eager"
    assert 0.0 <= scores["val_acc"] <= 1.0 and math.isfinite(scores["train_loss"]) and scores["epochs"] == 1


def test_learns_and_is_deterministic_for_a_seed():
    config = TrainConfig(epochs=4, batch_size=16, seed=1)
    a = train_and_score(tiny(), blobs(), config, "cpu")
    b = train_and_score(tiny(), blobs(), config, "cpu")
    assert a == b
    assert a["val_acc"] > 0.8


def test_retrain_scores_on_test():
    scores = retrain_and_test(tiny(), blobs(), TrainConfig(epochs=2, batch_size=32), "cpu")
    assert set(scores) == {"test_acc", "train_loss", "epochs", "amp", "step"} and 0.0 <= scores["test_acc"] <= 1.0


def test_a_last_batch_of_one_is_skipped_so_batchnorm_trains():
    scores = train_and_score(tiny(), blobs(n=33), TrainConfig(epochs=1, batch_size=16), "cpu")
    assert 0.0 <= scores["val_acc"] <= 1.0


def test_nan_loss_raises():
    with pytest.raises(NonFiniteLoss, match="not finite"):
        train_and_score(Diverges(), blobs(), TrainConfig(epochs=1), "cpu")


def test_time_limit_raises():
    with pytest.raises(TimeLimitExceeded, match="time limit of 1e-06s exceeded in epoch 1"):
        train_and_score(tiny(), blobs(), TrainConfig(epochs=50, batch_size=8, time_limit=1e-6), "cpu")


def test_wrong_output_shape_is_a_train_error():
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 5))
    message = r"output has shape \(120, 5\); expected \(batch, classes\) = \(120, 2\)"
    with pytest.raises(TrainError, match=message):
        train_and_score(model, blobs(), TrainConfig(epochs=1), "cpu")


def test_settings_and_devices():
    with pytest.raises(TrainError, match="epochs=0"):
        TrainConfig(epochs=0)
    assert pick_device("cpu") == "cpu"
    assert pick_device(None) == pick_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(TrainError, match="CUDA is not available"):
            pick_device("cuda")


# --------------------------------------------------------------------------- amp and graphs: policies


def test_amp_and_graphs_are_auto_by_default_and_ignored_on_a_cpu():
    assert TrainConfig().amp is None and TrainConfig().graphs is None
    assert use_amp(None, "cuda", AMP_MIN_FLOPS) and use_amp(None, "cuda:1", 10 * AMP_MIN_FLOPS)
    assert not use_amp(None, "cuda", AMP_MIN_FLOPS - 1) and not use_amp(None, "cuda", None)
    assert use_amp(True, "cuda", 1) and not use_amp(False, "cuda", 10 * AMP_MIN_FLOPS)
    assert not use_amp(True, "cpu", 10 * AMP_MIN_FLOPS) and not use_amp(None, "cpu", 10 * AMP_MIN_FLOPS)
    assert use_graphs(None, "cuda") and use_graphs(True, "cuda:0") and not use_graphs(False, "cuda")
    assert not use_graphs(True, "cpu") and not use_graphs(None, "cpu")
    with pytest.raises(TrainError, match="amp='yes'"):
        TrainConfig(amp="yes")


def test_settings_note_says_what_a_cpu_ignored():
    assert settings_note(True, None, "cpu") == "note: --amp needs a CUDA device; training on cpu in float32"
    assert settings_note(True, True, "cpu") == ("note: --amp and --graphs need a CUDA device; training on cpu "
                                                "in float32, step by step (no CUDA graphs)")
    assert settings_note(None, True, "cpu").startswith("note: --graphs needs")
    assert settings_note(None, None, "cpu") is None and settings_note(False, False, "cpu") is None
    assert settings_note(True, True, "cuda:0") is None


def test_amp_and_graphs_on_a_cpu_train_in_float32_eagerly():
    config = TrainConfig(epochs=2, batch_size=16, seed=3)
    plain = train_and_score(tiny(), blobs(), config, "cpu")
    asked = train_and_score(tiny(), blobs(), TrainConfig(epochs=2, batch_size=16, seed=3, amp=True, graphs=True),
                            "cpu")
    assert asked == plain and asked["amp"] is False and asked["step"] == "eager"


def test_cosine_schedule_is_the_schedulers():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.04)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10)
    expected = []
    for _ in range(10):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert cosine_schedule(0.04, 10) == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert cosine_schedule(0.04, 10)[0] == 0.04 and cosine_schedule(0.04, 10)[-1] < 0.001


def test_count_flops_counts_multiply_adds_twice_and_leaves_batchnorm_alone():
    model = tiny()
    model.train()
    before = model[2].running_mean.clone()
    assert count_flops(model, torch.randn(1, 1, 4, 4)) == 2 * (16 * 8 + 8 * 2)
    assert model.training and torch.equal(model[2].running_mean, before)


# --------------------------------------------------------------------------- the captured step, on a CPU


class FakeCapturer:
    """Stands in for CUDA graph capture: 'captures' the step as a call, replayed later.

    Like a real capture it runs nothing while capturing; ``fail`` makes capture raise instead.
    """

    def __init__(self, fail: bool = False) -> None:
        self.fail, self.replays, self.warm, self.captures, self.released = fail, 0, 0, 0, 0

    def warm_up(self):
        capturer = self

        class Ctx:
            def __enter__(self):
                capturer.warm += 1

            def __exit__(self, *exc):
                return False

        return Ctx()

    def capture(self, fn):
        self.captures += 1
        if self.fail:
            raise RuntimeError("CUDA error: operation not permitted when stream is capturing\nmore detail")

        def replay():
            self.replays += 1
            fn()

        return replay

    def release(self):
        self.released += 1


def fit(capturer=None, n=120, batch_size=16, epochs=2, seed=0):
    """(metrics, model) of ``_fit`` on blobs, with ``capturer`` standing in for CUDA graphs."""
    data, model = blobs(n), tiny()
    x, y = device_split(data, "train", "cpu")
    config = TrainConfig(epochs=epochs, batch_size=batch_size, seed=seed)
    return train_module._fit(model, x, y, 2, config, "cpu", None, capturer=capturer), model


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_graph_replays_train_exactly_like_eager_steps_partial_last_batch_included():
    # 120 samples in batches of 16: 7 full batches and one of 8 per epoch
    eager, eager_model = fit()
    capturer = FakeCapturer()
    graph, graph_model = fit(capturer)
    assert eager["step"] == "eager" and graph["step"] == "graph" and "graph_error" not in graph
    assert capturer.captures == 1 and capturer.warm == WARMUP and capturer.released == 1
    assert capturer.replays == 2 * 7 - WARMUP          # every full batch after warm-up was replayed
    assert graph["train_loss"] == eager["train_loss"]
    assert same_weights(graph_model, eager_model)      # so the partial batches were trained, not dropped


def test_the_partial_batch_runs_eagerly_between_replays():
    model = tiny()
    x, y = device_split(blobs(40), "train", "cpu")
    capturer = FakeCapturer()
    step = TrainStep(model, x, y, 2, lr=0.1, momentum=0.9, weight_decay=0.0, steps=20, batch_size=16,
                     device="cpu", autocast=contextlib.nullcontext, graphs=True, capturer=capturer)
    sizes = [16, 16, 16, 16, 8, 16, 5, 16]
    for size in sizes:
        step(torch.randperm(40)[:size])
    assert step.eager_steps == WARMUP + 2 and step.graph_steps == len(sizes) - WARMUP - 2
    assert capturer.replays == step.graph_steps and step.mode == "graph"
    assert int(step.counter) == len(sizes)             # each step took its learning rate, replays too
    assert float(step.lr) == pytest.approx(cosine_schedule(0.1, 20)[len(sizes) - 1], rel=1e-6)


def test_a_failed_capture_falls_back_to_eager_and_says_why():
    eager, eager_model = fit()
    capturer = FakeCapturer(fail=True)
    graph, graph_model = fit(capturer)
    assert graph["step"] == "eager" and capturer.captures == 1 and capturer.replays == 0
    assert graph["graph_error"] == "RuntimeError: CUDA error: operation not permitted when stream is capturing"
    assert graph["train_loss"] == eager["train_loss"] and same_weights(graph_model, eager_model)


class OutOfMemoryOnce(nn.Module):
    """tiny(), but the first forward pass with a batch of ``size`` runs out of memory."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.net, self.size, self.raised = tiny(), size, False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(x) == self.size and not self.raised:
            self.raised = True
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB")
        return self.net(x)


def test_out_of_memory_beside_the_graph_drops_it_and_goes_on_eagerly():
    x, y = device_split(blobs(120), "train", "cpu")
    config = TrainConfig(epochs=2, batch_size=16, seed=0)
    eager = train_module._fit(tiny(), x, y, 2, config, "cpu", None)
    capturer = FakeCapturer()
    model = OutOfMemoryOnce(8)  # the partial batch at the end of epoch 1 (7 x 16 + 8)
    metrics = train_module._fit(model, x, y, 2, config, "cpu", None, capturer=capturer)
    assert model.raised and capturer.released == 2  # dropped at the failure, then at the end
    assert metrics["graph_error"].startswith("OutOfMemoryError beside the captured graph, continued eagerly")
    assert capturer.replays == 7 - WARMUP             # epoch 2 ran eagerly
    assert metrics["train_loss"] == eager["train_loss"]  # the failed step was retried, not skipped or doubled


def test_too_few_batches_to_capture_stay_eager():
    capturer = FakeCapturer()
    metrics, _ = fit(capturer, n=40, batch_size=16, epochs=1)   # 2 full batches < WARMUP + 1
    assert metrics["step"] == "eager" and capturer.captures == 0


# --------------------------------------------------------------------------- out of memory


class RunsOutOfMemory(nn.Module):
    def __init__(self, error: Exception, after: int = 2) -> None:
        super().__init__()
        self.fc, self.error, self.after, self.calls = nn.Linear(16, 2), error, after, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls > self.after:
            raise self.error
        return self.fc(x.flatten(1))


@pytest.mark.parametrize("error", [
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.1 GiB total)\nmore"),
    RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"),
])
def test_out_of_memory_is_a_train_error_after_freeing(error, monkeypatch):
    freed = []
    monkeypatch.setattr(train_module, "_free_device_memory", freed.append)
    model = RunsOutOfMemory(error)
    with pytest.raises(OutOfMemory, match="out of memory on cpu: .*(Tried to allocate 2.00 GiB|ALLOC_FAILED)") as e:
        train_and_score(model, blobs(), TrainConfig(epochs=1, batch_size=16), "cpu")
    assert isinstance(e.value, TrainError) and "\n" not in str(e.value)
    assert freed == ["cpu"] and all(p.grad is None for p in model.parameters())


def test_other_errors_are_not_out_of_memory():
    with pytest.raises(RuntimeError, match="shape mismatch") as e:
        train_and_score(RunsOutOfMemory(RuntimeError("shape mismatch"), after=0), blobs(), TrainConfig(epochs=1),
                        "cpu")
    assert not isinstance(e.value, TrainError)


def test_memory_limit_is_a_no_op_off_cuda():
    with pytest.raises(TrainError, match="memory fraction 1.5"):
        limit_memory(1.5, "cpu")
    assert limit_memory(0.5, "cpu") is False


# --------------------------------------------------------------------------- data on the device once


def test_each_split_goes_to_the_device_once_per_dataset(monkeypatch):
    clear_device_data()
    copies = []
    real = train_module._tensors
    monkeypatch.setattr(train_module, "_tensors", lambda x, y, d: copies.append(len(x)) or real(x, y, d))
    data = blobs()
    for _ in range(3):
        train_and_score(tiny(), data, TrainConfig(epochs=1, batch_size=32), "cpu")
    retrain_and_test(tiny(), data, TrainConfig(epochs=1, batch_size=32), "cpu")
    assert copies == [120, 30, 30]                      # train, valid, then test; never again
    assert device_split(data, "train", "cpu")[0] is device_split(data, "train", "cpu")[0]
    other = blobs(seed=1)
    assert device_split(other, "train", "cpu")[0] is not device_split(data, "train", "cpu")[0]
    assert len(copies) == 4


def test_the_cache_forgets_a_dataset_that_is_gone():
    clear_device_data()
    data = blobs()
    device_split(data, "valid", "cpu")
    assert len(train_module._DEVICE_DATA) == 1
    del data
    gc.collect()
    assert len(train_module._DEVICE_DATA) == 0


def test_warm_up_puts_the_data_on_the_device():
    clear_device_data()
    data = blobs()
    assert warm_up("cpu", data) >= 0.0
    assert set(train_module._DEVICE_DATA[data]) == {("train", "cpu"), ("valid", "cpu"), ("test", "cpu")}


def test_warm_up_can_start_torch_compile(monkeypatch):
    compiled = []

    def fake_compile(fn):
        compiled.append(fn)
        return fn

    monkeypatch.setattr(torch, "compile", fake_compile)
    warm_up("cpu")
    assert compiled == []
    warm_up("cpu", compile_model=True)
    assert len(compiled) == 1


# --------------------------------------------------------------------------- on a GPU (skipped without CUDA)

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def einc_resnet_small(seed: int = 0, shape=(2, 8, 8), classes: int = 19) -> nn.Module:
    import einc

    torch.manual_seed(seed)
    g = einc.load("einspace")
    text = (Path(__file__).parent.parent / "examples" / "resnet_small.arch").read_text()
    arch = g.parse(text, input_shape=shape)
    return einc.build(arch, input_shape=shape, num_classes=classes)


def digits_like(n: int = 600, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    splits = {}
    for split, size in (("train", n), ("valid", n // 4), ("test", n // 4)):
        splits[split] = (rng.normal(size=(size, 2, 8, 8)).astype(np.float32),
                         rng.integers(0, 19, size=size).astype(np.int64))
    return Dataset("digits-like", *splits["train"], *splits["valid"], *splits["test"], num_classes=19,
                   input_shape=(2, 8, 8))


@cuda
def test_gpu_graph_losses_equal_eager():
    data = digits_like(600)  # batches of 64: 9 full and one of 24 per epoch
    runs = {}
    for graphs in (False, True):
        model = einc_resnet_small()
        runs[graphs] = (train_and_score(model, data, TrainConfig(epochs=3, batch_size=64, graphs=graphs, amp=False),
                                        "cuda"), model)
    (eager, m_eager), (graph, m_graph) = runs[False], runs[True]
    assert eager["step"] == "eager" and graph["step"] == "graph", graph.get("graph_error")
    assert graph["train_loss"] == pytest.approx(eager["train_loss"], rel=1e-4, abs=1e-5)
    for p, q in zip(m_eager.parameters(), m_graph.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-3, atol=1e-4)


@cuda
def test_gpu_bf16_autocast_trains_with_graphs():
    metrics = train_and_score(einc_resnet_small(), digits_like(600), TrainConfig(epochs=2, batch_size=64, amp=True),
                              "cuda")
    assert metrics["amp"] is True and metrics["step"] == "graph" and math.isfinite(metrics["train_loss"])
    auto = train_and_score(einc_resnet_small(), digits_like(600), TrainConfig(epochs=1, batch_size=64), "cuda")
    assert auto["amp"] is False  # ~6e6 FLOPs per sample: below AMP_MIN_FLOPS


class SyncsInForward(nn.Module):
    """Calls .item() in forward: fine eagerly, impossible to capture."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(128, 19)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = 1.0 if x.abs().max().item() >= 0 else 2.0
        return self.fc(x.flatten(1)) * scale


@cuda
def test_gpu_failed_capture_falls_back_to_eager():
    torch.manual_seed(0)
    metrics = train_and_score(SyncsInForward(), digits_like(600), TrainConfig(epochs=2, batch_size=64), "cuda")
    assert metrics["step"] == "eager" and metrics["graph_error"]
    torch.manual_seed(0)
    again = train_and_score(SyncsInForward(), digits_like(600), TrainConfig(epochs=2, batch_size=64, graphs=False),
                            "cuda")
    assert again["train_loss"] == pytest.approx(metrics["train_loss"], rel=1e-5)


class Greedy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(128, 19)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        free, _ = torch.cuda.mem_get_info()
        torch.empty(int(free * 2), dtype=torch.uint8, device=x.device)  # more than there is
        return self.fc(x.flatten(1))


@cuda
def test_gpu_out_of_memory_frees_and_the_next_candidate_trains():
    data = digits_like(300)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    model = Greedy()
    with pytest.raises(OutOfMemory, match="out of memory on cuda"):
        train_and_score(model, data, TrainConfig(epochs=1, batch_size=64), "cuda")
    assert next(model.parameters()).device.type == "cpu"
    assert torch.cuda.memory_allocated() <= before + 2**20
    metrics = train_and_score(einc_resnet_small(), data, TrainConfig(epochs=1, batch_size=64), "cuda")
    assert math.isfinite(metrics["train_loss"])
