"""A plugin whose operation's lowering disagrees with its shape rule: --verify must catch it."""

from einc.ops import Op


def _same(features):
    return features


def _lower_wrong(ctx, nodes, features):
    return [ctx.call(".narrow", nodes[0], -1, 0, 1)]  # keeps one column: not what _same promised


OPS = [Op("liar", "computation", (), _same, lower=_lower_wrong, doc="claims to keep the shape")]
