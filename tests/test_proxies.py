"""einc.proxies on tiny networks whose scores are known by hand, the study's Spearman, and
``einc proxies`` end to end on a few small networks."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn as nn
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

import einc
from einc.cli import main
from einc.proxies import PROXIES, ProxyError, jacob_cov, naswot, score, snip, synflow
from einc.runtime.proxy_study import ranks, spearman


def _summed(out: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return out.sum()


def _batch(n: int = 8, d: int = 4, classes: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=gen), torch.randint(0, classes, (n,), generator=gen)


def _mlp(d: int = 4, hidden: int = 8, out: int = 2, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, out))


# --------------------------------------------------------------------------- costs


def test_params_and_flops_are_exact():
    scores = score(_mlp(), _batch())
    assert scores["params"].value == (4 * 8 + 8) + (8 * 2 + 2)
    assert scores["flops"].value == 2 * (4 * 8 + 8 * 2)  # per sample, 2 per multiply-add: batch 8 does not count


def test_an_architecture_is_scored_with_its_head():
    g = einc.load("einspace")
    arch = g.parse("sequential(linear(d=16), relu)", (5, 6))
    scores = score(arch, (torch.randn(4, 5, 6), torch.tensor([0, 1, 2, 0])), output_shape=(3,))
    assert scores["params"].value == arch.infer((5, 6)).params + 16 * 3 + 3  # the head: mean, then Linear(16, 3)
    # torch counts the matmuls (5 positions x 6 x 16, the head's 16 x 3); einc's infer counts the relu's
    # 80 elementwise operations too
    assert scores["flops"].value == 2 * (5 * 6 * 16 + 16 * 3) == arch.infer((5, 6)).flops - 5 * 16 + 2 * 16 * 3
    with pytest.raises(einc.EinError, match="output_shape"):
        score(arch, (torch.randn(4, 5, 6), torch.tensor([0, 1, 2, 0])))


# --------------------------------------------------------------------------- synflow


def test_synflow_by_hand():
    # all-ones input, |weights|: R = 1'|W2|(|W1| 1 + |b1|) + 1'|b2|, and w * dR/dw summed per layer gives
    # 1'|W2||W1|1 + 1'|W2||b1| + 1'|W2|(|W1|1 + |b1|) + 1'|b2|
    model = _mlp()
    w1, b1, w2, b2 = (p.detach().double().abs() for p in model.parameters())
    h = w1 @ torch.ones(4, dtype=torch.float64) + b1
    want = (w2 @ (w1 @ torch.ones(4, dtype=torch.float64))).sum() + (w2 @ b1).sum() + (w2 @ h).sum() + b2.sum()
    assert synflow(model, *_batch(), _summed) == pytest.approx(float(want), rel=1e-12)


def test_synflow_is_invariant_to_rescaling_a_layer_pair():
    a, b = _mlp(seed=1), _mlp(seed=1)
    with torch.no_grad():  # the same function: ReLU is positively homogeneous
        b[0].weight.mul_(8.0)  # a power of 2: scaled exactly
        b[0].bias.mul_(8.0)
        b[2].weight.div_(8.0)
    x, y = _batch()
    assert torch.allclose(a(x), b(x), atol=1e-5)
    assert score(a, (x, y))["synflow"].value == pytest.approx(score(b, (x, y))["synflow"].value, rel=1e-12)


class _Affine(nn.Module):
    """What a normalisation computes for synflow: x * weight + bias."""

    def __init__(self, norm: nn.Module, view: tuple[int, ...]) -> None:
        super().__init__()
        self.weight, self.bias, self.view = norm.weight, norm.bias, view

    def forward(self, x):
        return x * self.weight.reshape(self.view) + self.bias.reshape(self.view)


@pytest.mark.parametrize("norm, view, shape", [(nn.BatchNorm1d(8), (-1, 1), (4, 6)), (nn.LayerNorm(8), (-1,), (6, 4))])
def test_synflow_keeps_only_the_affine_map_of_norms(norm, view, shape):
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2)
        norm.bias.uniform_(-1, 1)
    torch.manual_seed(2)
    first, last = (nn.Linear(4, 8), nn.Linear(8, 3)) if view == (-1,) else (nn.Conv1d(4, 8, 1), nn.Conv1d(8, 3, 1))
    with_norm = nn.Sequential(first, norm, nn.ReLU(), last)
    affine = nn.Sequential(first, _Affine(norm, view), nn.ReLU(), last)
    x = torch.randn(5, *shape)
    got = synflow(with_norm, x, x, _summed)
    assert got == pytest.approx(synflow(affine, x, x, _summed), rel=1e-12)
    assert math.isfinite(got) and got > 0


def test_synflow_of_an_architecture_does_not_depend_on_the_optimiser():
    # four equal branches with a LayerNorm: the optimiser batches them, the norm becomes F.layer_norm
    # followed by a stacked affine map (einc.passes.batching_rules), which synflow must see alike
    g = einc.load("einspace")
    arch = g.parse("branching(clone(b=4), [sequential(norm, linear(d=16))]*4, concat(dim=2, b=4))", (6, 8))
    x, y = torch.randn(16, 6, 8), torch.randint(0, 3, (16,))
    models = []
    for optimize in (False, True):
        torch.manual_seed(0)
        models.append(einc.build(arch, (6, 8), output_shape=(3,), optimize=optimize))
    assert "layer_norm" in models[1].code and "layer_norm" not in models[0].code  # the batched form
    plain, fused = (score(m, (x, y), names=["synflow", "snip", "jacob_cov"]) for m in models)
    for name in plain:
        assert fused[name].value == pytest.approx(plain[name].value, rel=1e-6), name


def test_synflow_that_overflows_float64_is_nan_with_its_reason():
    deep = nn.Sequential(*[nn.Linear(4, 4) for _ in range(130)])
    with torch.no_grad():
        for p in deep.parameters():
            p.fill_(100.0)  # R ~ 400^130 > 1e308
    s = score(deep, _batch(), names=["synflow"])["synflow"]
    assert math.isnan(s.value) and "overflows float64" in s.reason


# --------------------------------------------------------------------------- gradients


def test_snip_and_grad_norm_by_hand():
    model = nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[2.0, -1.0, 0.5]]))
    x = torch.tensor([[1.0, 2.0, 3.0], [0.5, -4.0, 1.0]])
    g = x.sum(0)  # d(sum of outputs)/dw
    assert snip(model, x, x, _summed) == pytest.approx(float((g * model.weight[0].detach()).abs().sum()))
    assert score(model, (x, x), names=["grad_norm"], loss=_summed)["grad_norm"].value == pytest.approx(
        float(g.norm()))


def test_snip_and_grad_norm_are_zero_when_gradients_vanish():
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2, bias=False))
    with torch.no_grad():  # every ReLU is off: a constant output, no gradient reaches any weight
        model[0].weight.zero_()
        model[0].bias.fill_(-1.0)
    scores = score(model, _batch())
    assert scores["snip"].value == 0.0
    assert scores["grad_norm"].value == 0.0


# --------------------------------------------------------------------------- activations


def test_naswot_by_hand():
    model = nn.Sequential(nn.Linear(4, 4, bias=False), nn.ReLU())
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(4))
    x = torch.tensor([[1.0, -1.0, 1.0, -1.0], [1.0, 1.0, -1.0, -1.0]])  # codes 1010 and 1100: 2 units agree
    assert naswot(model, x, x, _summed) == pytest.approx(math.log(4 * 4 - 2 * 2))


def test_naswot_is_larger_for_a_network_that_separates_inputs():
    separating = _mlp(hidden=32)
    constant = _mlp(hidden=32)
    with torch.no_grad():  # every input gets the code "all active"
        constant[0].weight.zero_()
        constant[0].bias.fill_(1.0)
    x, y = _batch(n=16)
    good, bad = naswot(separating, x, y, _summed), naswot(constant, x, y, _summed)
    assert math.isfinite(good)
    assert bad == -math.inf  # K is singular: every sample has the same code
    assert good > bad


def test_naswot_counts_leaky_relu_and_needs_some_relu():
    x, y = _batch(n=6)
    leaky = nn.Sequential(nn.Linear(4, 16), nn.LeakyReLU(0.01))  # einspace's relu
    assert math.isfinite(naswot(leaky, x, y, _summed))
    s = score(nn.Sequential(nn.Linear(4, 16), nn.Tanh()), (x, y), names=["naswot"])["naswot"]
    assert math.isnan(s.value) and "ReLU" in s.reason


def test_jacob_cov_of_a_linear_network_is_its_floor():
    # a linear map has one Jacobian for every sample: correlations all 1, eigenvalues n, 0, ..., 0
    n, k = 8, 1e-5
    x, y = _batch(n=n)
    linear = jacob_cov(nn.Linear(4, 3), x, y, _summed)
    floor = -(math.log(n + k) + 1 / (n + k)) - (n - 1) * (math.log(k) + 1 / k)
    assert linear == pytest.approx(floor, rel=1e-6)
    assert jacob_cov(_mlp(hidden=64), x, y, _summed) > linear


def test_jacob_cov_of_a_constant_network_is_nan():
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU())
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].bias.fill_(-1.0)
    with pytest.raises(ProxyError, match="constant"):
        jacob_cov(model, *_batch(), _summed)


# --------------------------------------------------------------------------- score


class _Broken(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 2)

    def forward(self, x):
        raise RuntimeError("this network cannot run\nsecond line")


def test_score_turns_failures_into_nan_with_a_reason():
    scores = score(_Broken(), _batch())
    assert list(scores) == list(PROXIES)
    assert scores["params"].value == 10 and scores["params"].reason is None
    for name in PROXIES:
        if name != "params":
            assert math.isnan(scores[name].value)
            assert scores[name].reason == "RuntimeError: this network cannot run"
            assert scores[name].seconds >= 0


def test_score_leaves_the_model_as_it_was():
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scores = score(model, _batch())
    assert all(math.isfinite(s.value) for s in scores.values())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in model.parameters())
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_score_names_the_unknown_proxy():
    with pytest.raises(einc.EinError, match="unknown proxy zen; the proxies are params"):
        score(_mlp(), _batch(), names=["synflow", "zen"])


# --------------------------------------------------------------------------- Spearman


def test_spearman_by_hand():
    # ranks of y: 1, 2, 3.5, 5, 3.5 (the tie averaged); centred products 4 + 1 + 0 + 2 + 1 = 8 over
    # sqrt(10 * 9.5): scipy.stats.spearmanr gives 0.8207826816681233
    assert spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) == pytest.approx(0.8207826816681233, rel=1e-12)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(spearman([1, 2, 3], [4, 4, 4]))
    assert math.isnan(spearman([1], [2]))
    assert list(ranks([-math.inf, 3.0, -math.inf, 1.0])) == [1.5, 4.0, 1.5, 3.0]


@given(st.lists(st.tuples(st.integers(-5, 5), st.floats(-1e6, 1e6)), min_size=2, max_size=30))
def test_spearman_depends_on_ranks_only(pairs):
    x, y = [float(a) for a, _ in pairs], [b for _, b in pairs]
    rho = spearman(x, y)
    if math.isnan(rho):
        return
    assert -1 - 1e-12 <= rho <= 1 + 1e-12
    assert spearman([math.exp(v) * 3 + 1 for v in x], y) == pytest.approx(rho, abs=1e-9)  # increasing map
    assert spearman([-v for v in x], y) == pytest.approx(-rho, abs=1e-9)
    assert spearman(y, x) == pytest.approx(rho, abs=1e-9)


# --------------------------------------------------------------------------- einc proxies

TINY = ["-n", "3", "--epochs", "1", "--batch-size", "64", "--proxy-batch", "16", "--max-flops", "1000000",
        "--max-params", "50000", "--max-activations", "50000"]


@pytest.mark.slow  # trains three small networks for one epoch: a few seconds
def test_einc_proxies_prints_its_table(tmp_path):
    r = CliRunner().invoke(main, ["proxies", "--data", "digits", *TINY, "--out", str(tmp_path / "nets.jsonl")])
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0] == "3 networks of einspace on digits, 1 epoch each: 3 trained"
    table = lines[lines.index("proxy       Spearman  networks   median time") + 1:]
    assert [line.split()[0] for line in table[:len(PROXIES) + 1]] == [*PROXIES, "training"]
    records = [json.loads(line) for line in (tmp_path / "nets.jsonl").read_text().splitlines()]
    assert len({r["arch"] for r in records}) == 3
    assert all(set(r["proxies"]) == set(PROXIES) and 0 <= r["metric"] <= 1 for r in records)
    assert r.stderr.count("network ") == 3  # progress, one line per network


def test_einc_proxies_names_an_unknown_proxy_in_one_line():
    r = CliRunner().invoke(main, ["proxies", "--proxies", "synflow,zen", "-n", "1"])
    assert r.exit_code == 1
    assert r.output.strip() == ("unknown proxy zen; the proxies are params, flops, synflow, naswot, jacob_cov, "
                                "grad_norm, snip")
