"""A plugin whose operation lowers to torch.cummax, which has no ONNX conversion: export names it."""

from einc.ops import Op


def _same(features):
    return features


def _lower(ctx, nodes, features):
    values = ctx.call("torch.cummax", nodes[0], -1)
    return [ctx.call("getitem", values, 0)]


OPS = [Op("running-max", "computation", (), _same, lower=_lower, doc="running maximum along the last dimension")]
