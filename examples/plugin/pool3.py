"""Three operations for einc, as a plugin: ``einc check examples/plugin/einspace_plus.ein --plugin examples/plugin/pool3.py``.

A plugin is a Python file with an ``OPS`` list of ``einc.ops.Op``; grammar/README.md,
"Writing an operation", explains every field. einc runs this file only when a command is
given ``--plugin`` (or the API a library built from it); a .ein file can only name its ops.
"""

from einc.ops import IM, Cost, Feature, NotApplicable, Op, Param


def _same(features, **_):
    (f,) = features  # a computation takes one feature (the group's arity is checked before)
    return features


def _elementwise(features):
    return Cost(flops=features[0].numel)


def _lower_gelu(ctx, nodes, features):
    return [ctx.call("torch.nn.functional.gelu", nodes[0])]


def _pool3(features):
    """3x3 average pooling with stride 3: Im features whose H and W are multiples of 3."""
    (f,) = features
    if f.mode != IM:
        raise NotApplicable(f"pool3 needs an Im feature, not {f}")
    c, h, w = f.shape
    if h % 3 or w % 3:
        raise NotApplicable(f"pool3 needs H and W divisible by 3, not {h}x{w}")
    return (Feature((c, h // 3, w // 3), IM),)


def _pool3_cost(features):
    return Cost(flops=features[0].numel)  # nine additions per output, one output per nine inputs


def _lower_pool3(ctx, nodes, features):
    return [ctx.call("torch.nn.functional.avg_pool2d", nodes[0], 3, stride=3)]


def _lower_scale(ctx, nodes, features, init):
    import torch

    (f,) = features
    channels = f.shape[0] if f.mode == IM else f.shape[-1]
    shape = (channels, 1, 1) if f.mode == IM else (channels,)
    # init= is the source of the same value: einc.emit writes it into the standalone file
    expr = f"torch.full({shape}, {init / 10})"
    weight = ctx.parameter("scale", torch.nn.Parameter(torch.full(shape, init / 10)), init=expr)
    return [ctx.call("mul", nodes[0], weight)]


def _scale_cost(features, init):
    f = features[0]
    return Cost(params=f.shape[0] if f.mode == IM else f.shape[-1], flops=f.numel)


OPS = [
    Op("gelu", "computation", (), _same, _elementwise, _lower_gelu, doc="GELU, elementwise"),
    Op("pool3", "computation", (), _pool3, _pool3_cost, _lower_pool3,
       doc="3x3 average pooling, stride 3 (H and W divisible by 3)"),
    Op("scale", "computation", (Param("init", "an integer from 1 to 10 (tenths)", lambda v: type(v) is int and 1 <= v <= 10),),
       _same, _scale_cost, _lower_scale, doc="a learnable scale per channel, starting at init/10 (LayerScale)"),
]
