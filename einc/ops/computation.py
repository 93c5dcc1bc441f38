"""Computation: one feature in, one out, content changed (paper 3.1, A.2 eq. 24-26)."""

from __future__ import annotations

from .base import Cost, Op, Param, positive, single
from .state import IM, Feature, Features

LEAKY_SLOPE = 0.01  # the paper's "relu" is a leaky ReLU
POS_ENC_STD = 0.02  # the published code draws from N(0, 1); 0.02 is the usual, stable choice


def _same(features: Features) -> Features:
    single(features)
    return features


def _linear(features: Features, d: int) -> Features:
    f = single(features)
    return (Feature(f.shape[:-1] + (d,), f.mode, f.grid),)


def _linear_cost(features: Features, d: int) -> Cost:
    f = single(features)
    return Cost(params=f.shape[-1] * d + d, flops=2 * f.numel * d)


def _norm_cost(features: Features) -> Cost:
    f = single(features)
    return Cost(params=2 * (f.shape[0] if f.mode == IM else f.shape[-1]), flops=2 * f.numel)


def _elementwise_cost(features: Features) -> Cost:
    return Cost(flops=single(features).numel)


def _pos_enc_cost(features: Features) -> Cost:
    f = single(features)
    return Cost(params=f.numel, flops=f.numel)


def _lower_linear(ctx, nodes, features, d):
    import torch.nn as nn

    return [ctx.module("linear", nn.Linear(features[0].shape[-1], d), nodes[0])]


def _lower_norm(ctx, nodes, features):
    import torch.nn as nn

    f = features[0]
    if f.mode == IM:  # BatchNorm over channels in Im mode, LayerNorm over tokens' features in Col
        return [ctx.module("norm", nn.BatchNorm2d(f.shape[0]), nodes[0])]
    return [ctx.module("norm", nn.LayerNorm(f.shape[-1]), nodes[0])]


def _lower_relu(ctx, nodes, features):
    return [ctx.call("torch.nn.functional.leaky_relu", nodes[0], negative_slope=LEAKY_SLOPE)]


def _lower_softmax(ctx, nodes, features):
    return [ctx.call("torch.softmax", nodes[0], dim=-1)]


def _lower_pos_enc(ctx, nodes, features):
    import torch

    shape = (1, *features[0].shape)
    table = torch.nn.Parameter(torch.randn(shape) * POS_ENC_STD)
    init = f"torch.randn({', '.join(map(str, shape))}) * {POS_ENC_STD}"  # for einc.emit's source
    return [ctx.call("add", nodes[0], ctx.parameter("pos", table, init=init))]


LINEAR = Op("linear", "computation", (Param("d", "a positive integer", positive),), _linear,
            _linear_cost, _lower_linear, doc="affine map of the last dim to width d, with bias")
NORM = Op("norm", "computation", (), _same, _norm_cost, _lower_norm,
          doc="BatchNorm2d over C in Im mode, LayerNorm over D in Col mode")
RELU = Op("relu", "computation", (), _same, _elementwise_cost, _lower_relu,
          doc=f"leaky ReLU, slope {LEAKY_SLOPE}")
SOFTMAX = Op("softmax", "computation", (), _same, _elementwise_cost, _lower_softmax,
             doc="softmax over the last dim")
POS_ENC = Op("pos-enc", "computation", (), _same, _pos_enc_cost, _lower_pos_enc, hint="pos",
             doc=f"learnable table of the feature's shape, added; init N(0, {POS_ENC_STD}^2)")
OPS = (LINEAR, NORM, RELU, SOFTMAX, POS_ENC)
