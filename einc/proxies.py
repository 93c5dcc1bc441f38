"""Zero-cost proxies: numbers an untrained network gives on one minibatch, which may rank
networks by the accuracy they would reach after training, for a fraction of a training's cost.

Each proxy is a function ``proxy(model, inputs, targets, loss) -> float`` of a network at its
initial weights, a batch (batch axis first) and the task's loss ``loss(outputs, targets)``;
``PROXIES`` names them all, and ``score`` runs any of them on one network, each on its own copy,
timed, turning a proxy that cannot judge a network into NaN with its reason:

    >>> scores = score(arch, (x, y), output_shape=(10,))     # or an nn.Module instead of arch
    >>> scores["synflow"].value, scores["synflow"].seconds, scores["naswot"].reason

Conventions shared by all (checked by tests/test_proxies.py):

* Sums run over every parameter tensor of the model (weights, biases, norms' affine maps,
  positional encodings), not only convolution and linear weights as in Abdelfattah et al.'s
  code: an einc network's weights live in whatever modules its grammar lowers to.
* The data-based proxies run in training mode (BatchNorm normalises with the batch's
  statistics), as the reference code leaves its networks; ``flops`` and ``synflow`` in eval mode.
* A proxy may change the model it is given (gradients, BatchNorm statistics, signs and dtype of
  weights); ``score`` hands each one a fresh copy.

Sources: Abdelfattah et al., "Zero-Cost Proxies for Lightweight NAS" (ICLR 2021) define
grad_norm, snip and synflow as NAS proxies and evaluate them; White et al., "A Deeper Look at
Zero-Cost Proxies for Lightweight NAS" (ICLR Blog Track 2022) and Krishnakumar et al.,
"NAS-Bench-Suite-Zero" (NeurIPS 2022) compare them across benchmarks. Each proxy's own paper is
in its docstring.
"""

from __future__ import annotations

import copy
import inspect
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from .errors import EinError

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Proxy = Callable[[nn.Module, torch.Tensor, torch.Tensor, Loss], float]


class ProxyError(EinError):
    """A proxy that cannot judge this network (no ReLU for NASWOT, an overflow, ...): ``score`` makes
    it NaN with this reason."""


@dataclass(frozen=True)
class Score:
    """One proxy's value on one network, the seconds it took, and why the value is NaN when it is."""

    value: float
    seconds: float
    reason: str | None = None

    def __float__(self) -> float:
        return self.value


# --------------------------------------------------------------------------- costs


def params(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, loss: Loss) -> float:
    """Parameters of the model, head included (``arch.infer(shape).params`` counts the backbone only)."""
    return float(sum(p.numel() for p in model.parameters()))


def flops(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, loss: Loss) -> float:
    """FLOPs of one sample's forward pass as torch's FlopCounterMode counts them: 2 per multiply-add
    of matmuls, convolutions and attention, head included. ``arch.infer(shape).flops`` (``einc
    sample --json``) has the same unit but also counts elementwise operations and norms."""
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(inputs[:1])
    return float(counter.get_total_flops())


# --------------------------------------------------------------------------- gradient-based


def _backward(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
              loss: Loss) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One forward and backward pass of the loss in training mode: (parameter, gradient) of every
    parameter the loss reaches."""
    model.train()
    model.zero_grad(set_to_none=True)
    value = loss(model(inputs), targets)
    if not torch.isfinite(value):
        raise ProxyError(f"the loss at initialisation is not finite ({float(value)})")
    value.backward()
    pairs = [(p.detach().double(), p.grad.double()) for p in model.parameters() if p.grad is not None]
    if not pairs:
        raise ProxyError("no parameter gets a gradient from the loss")
    return pairs


def grad_norm(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, loss: Loss) -> float:
    """Sum over parameter tensors of the Euclidean norm of the loss's gradient, sum_p ||dL/dp||_2
    (Abdelfattah et al. 2021, "Zero-Cost Proxies for Lightweight NAS")."""
    return math.fsum(float(g.norm()) for _, g in _backward(model, inputs, targets, loss))


def snip(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, loss: Loss) -> float:
    """Connection sensitivity summed over all weights, sum |dL/dw * w| (Lee et al. 2019, "SNIP:
    Single-shot Network Pruning based on Connection Sensitivity"; as a NAS proxy, Abdelfattah et al.
    2021). The gradient with respect to a unit mask on w, which SNIP defines, is dL/dw * w."""
    return math.fsum(float((g * w).abs().sum()) for w, g in _backward(model, inputs, targets, loss))


class _AffineNorms(TorchFunctionMode):
    """Every normalisation computes only its affine map (the input times its weight, plus its bias)."""

    NORMS = {F.batch_norm: 1, F.instance_norm: 1, F.group_norm: 1, F.layer_norm: -1, F.rms_norm: -1}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in self.NORMS:
            return func(*args, **kwargs)
        bound = inspect.signature(func).bind(*args, **kwargs).arguments
        x, weight, bias = bound["input"], bound.get("weight"), bound.get("bias")
        if self.NORMS[func] == 1:  # per channel (axis 1)
            view = (-1,) + (1,) * (x.dim() - 2)
            weight = None if weight is None else weight.reshape(view)
            bias = None if bias is None else bias.reshape(view)
        x = x if weight is None else x * weight
        return x if bias is None else x + bias


def synflow(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, loss: Loss) -> float:
    """Synaptic flow, sum over all weights of w * dR/dw with R the sum of the outputs of the network
    whose weights are replaced by their absolute values, on one input of all ones (Tanaka et al.
    2020, "Pruning neural networks without any data by iteratively conserving synaptic flow"; as a
    NAS proxy, Abdelfattah et al. 2021). Data-free: ``inputs`` gives only the shape.

    Computed in float64 (a deep network's R overflows float32); a value that overflows float64 too
    is a ProxyError. Normalisations keep only their affine map: Tanaka et al. score in eval mode,
    where a BatchNorm at initialisation (running mean 0, variance 1) is its affine map, and
    Abdelfattah et al. build the network without BatchNorm; normalising by the statistics of a
    constant input would divide by zero variance (LayerNorm) or erase the signal. Dropout is off.
    """
    model.double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.abs_()
    model.zero_grad(set_to_none=True)
    ones = torch.ones((1, *inputs.shape[1:]), dtype=torch.float64, device=inputs.device)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # constants a forward pass makes (torch.ones, ...) follow
    try:
        with _AffineNorms():
            torch.sum(model(ones)).backward()
    finally:
        torch.set_default_dtype(previous)
    with torch.no_grad():
        value = math.fsum(float((p * p.grad).sum()) for p in model.parameters() if p.grad is not None)
    if not math.isfinite(value):
        raise ProxyError("synflow overflows float64 on this network")
    return value


# --------------------------------------------------------------------------- activation-based


class _ReluCodes(TorchFunctionMode):
    """Adds each ReLU's binary code kernel to ``kernel``: K[i, j] = number of the units on which
    samples i and j are both active or both inactive (the leaky ReLU of einspace included: its
    linear regions are the ReLU's). A function mode, not a dispatch mode: torch's first dispatch
    mode in a process imports torch._dynamo (seconds)."""

    RELUS = {F.relu, F.relu_, F.leaky_relu, F.leaky_relu_, torch.relu, torch.relu_, torch.Tensor.relu,
             torch.Tensor.relu_}

    def __init__(self, batch: int) -> None:
        super().__init__()
        self.batch = batch
        self.kernel: torch.Tensor | None = None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.RELUS:
            x = args[0] if args else kwargs["input"]
            if x.dim() == 0 or x.shape[0] != self.batch:
                raise ProxyError(f"a ReLU's input {tuple(x.shape)} does not have the batch ({self.batch}) first")
            c = (x > 0).reshape(self.batch, -1).double()
            k = c @ c.T + (1 - c) @ (1 - c).T
            self.kernel = k if self.kernel is None else self.kernel + k
        return func(*args, **kwargs)


def naswot(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, loss: Loss) -> float:
    """log |det K|, K the kernel of the samples' binary activation codes over every ReLU unit:
    K[i, j] = units - Hamming distance of codes i and j (Mellor et al. 2021, "Neural Architecture
    Search without Training", ICML). -inf when two samples share a code (K singular); a network
    without ReLU has no code (ProxyError). Larger when the network tells the batch's inputs apart."""
    model.train()
    codes = _ReluCodes(len(inputs))
    with torch.no_grad(), codes:
        model(inputs)
    if codes.kernel is None:
        raise ProxyError("NASWOT needs ReLUs; this network has none")
    return float(torch.linalg.slogdet(codes.kernel).logabsdet)


def jacob_cov(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, loss: Loss) -> float:
    """Jacobian covariance: with J_i the gradient of sample i's summed outputs with respect to its
    input and lambda the eigenvalues of the correlation matrix of the J_i, -sum(log(lambda + k) +
    1 / (lambda + k)), k = 1e-5 (Mellor et al. 2020, "Neural Architecture Search without Training",
    arXiv:2006.04647v1; as a NAS proxy, Abdelfattah et al. 2021). Largest when the samples' local
    linear maps are uncorrelated."""
    model.train()
    x = inputs.detach().clone().requires_grad_(True)
    out = model(x)
    out.backward(torch.ones_like(out))
    assert x.grad is not None
    jac = x.grad.reshape(len(x), -1).double()
    centred = jac - jac.mean(dim=1, keepdim=True)
    norms = centred.norm(dim=1)
    if len(x) < 2 or bool((norms == 0).any()):
        raise ProxyError("a sample's input gradient is constant, so its correlation is undefined")
    unit = centred / norms[:, None]
    eig = torch.linalg.eigvalsh(unit @ unit.T)
    k = 1e-5
    return float(-(torch.log(eig + k) + 1 / (eig + k)).sum())


# --------------------------------------------------------------------------- scoring

PROXIES: dict[str, Proxy] = {"params": params, "flops": flops, "synflow": synflow, "naswot": naswot,
                             "jacob_cov": jacob_cov, "grad_norm": grad_norm, "snip": snip}


def score(net: Any, batch: tuple[torch.Tensor, torch.Tensor], names: Sequence[str] | None = None,
          loss: Loss | None = None, output_shape: tuple[int, ...] | None = None, seed: int = 0) -> dict[str, Score]:
    """Each proxy of ``names`` (default: all of ``PROXIES``, in its order) on ``net``, each on its own
    copy, so ``net`` is left as it was; a proxy that fails gives NaN and the reason. Seconds are the
    proxy's own (the copy excluded; CUDA synchronised).

    ``net``: an nn.Module on the batch's device, or an ``einc.Architecture``, built after
    ``torch.manual_seed(seed)`` (as einc.runtime seeds a training, so the weights are the ones a
    search trains) with the head that outputs ``output_shape`` per sample ((classes,) for
    classification; see ``einc.build``) and without the optimiser's rewrites: those change how
    weights are grouped into tensors (grad_norm sums per tensor) and compute a shared branch's
    ReLUs once (NASWOT counts every copy's units), not the function. So an architecture's scores
    are its own, and a module's those of its graph.
    ``batch``: (inputs, targets), batch axis first. ``loss``: of (outputs, targets); default
    cross-entropy.
    """
    from .api import Architecture, build

    names = list(PROXIES) if names is None else list(names)
    unknown = [n for n in names if n not in PROXIES]
    if unknown:
        raise EinError(f"unknown proxy {', '.join(unknown)}; the proxies are {', '.join(PROXIES)}")
    inputs, targets = batch
    if isinstance(net, Architecture):
        if output_shape is None:
            raise EinError("scoring an architecture needs the output_shape of its head ((classes,) to classify)")
        torch.manual_seed(seed)
        net = build(net, tuple(inputs.shape[1:]), output_shape=tuple(output_shape), optimize=False).to(inputs.device)
    loss = F.cross_entropy if loss is None else loss
    out = {}
    for name in names:
        model = copy.deepcopy(net)
        _sync(inputs.device)
        start = time.perf_counter()
        reason = None
        try:
            value = PROXIES[name](model, inputs, targets, loss)
        except ProxyError as e:
            value, reason = math.nan, str(e)
        except Exception as e:  # any network of a grammar may meet any torch error: NaN, and why
            value, reason = math.nan, f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        _sync(inputs.device)
        seconds = time.perf_counter() - start
        if math.isnan(value) and reason is None:
            reason = "the value is NaN"
        out[name] = Score(value, seconds, reason)
        del model
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
