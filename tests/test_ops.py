"""The operation library: every shape rule on valid inputs (exact output features), every
not-applicable case, hyperparameter checking and costs."""

from __future__ import annotations

import pytest

from einc.ops import BUILTIN, COL, IM, Cost, Feature, Library, NotApplicable, Op, feature_for, mode_of, representative


def im(c: int, h: int, w: int) -> Feature:
    return Feature((c, h, w), IM)


def col(s: int, d: int, grid: tuple[int, int] | None = None) -> Feature:
    return Feature((s, d), COL, grid)


def apply(name: str, *features: Feature, **args) -> tuple[Feature, ...]:
    return BUILTIN[name].apply(tuple(features), tuple(sorted(args.items())))


def refuses(name: str, *features: Feature, match: str = "", **args) -> None:
    with pytest.raises(NotApplicable, match=match):
        apply(name, *features, **args)


TESTED: set[str] = set()


def op(*names: str):
    """Marks a test as covering the shape rule of ``names`` (checked by the last test)."""
    TESTED.update(names)
    return lambda test: test


# ---------------------------------------------------------------- branching


@op("clone")
def test_clone() -> None:
    assert apply("clone", im(3, 8, 8), b=4) == (im(3, 8, 8),) * 4
    assert apply("clone", col(64, 16, (8, 8)), b=2) == (col(64, 16, (8, 8)),) * 2


@op("group-dim")
def test_group_dim() -> None:
    assert apply("group-dim", im(4, 8, 6), dim=1, b=2) == (im(2, 8, 6),) * 2
    assert apply("group-dim", im(4, 8, 6), dim=2, b=4) == (im(4, 2, 6),) * 4
    assert apply("group-dim", im(4, 8, 6), dim=3, b=2) == (im(4, 8, 3),) * 2
    # splitting the sequence breaks its grid; splitting the features keeps it
    assert apply("group-dim", col(64, 16, (8, 8)), dim=1, b=2) == (col(32, 16),) * 2
    assert apply("group-dim", col(64, 16, (8, 8)), dim=2, b=8) == (col(64, 2, (8, 8)),) * 8


@op("group-dim")
def test_group_dim_not_applicable() -> None:
    refuses("group-dim", im(3, 8, 8), dim=1, b=2, match="2 does not divide dim 1 of size 3")
    refuses("group-dim", im(4, 8, 6), dim=3, b=4, match="does not divide")
    refuses("group-dim", col(64, 16), dim=3, b=2, match="group-dim over dim 3 of a 2-d Col feature")


@pytest.mark.parametrize("name,args", [("clone", {"b": 2}), ("group-dim", {"dim": 1, "b": 2})])
def test_branching_ops_take_one_feature(name: str, args: dict) -> None:
    refuses(name, im(4, 8, 8), im(4, 8, 8), match="takes one feature, not 2 branches", **args)


# ---------------------------------------------------------------- aggregation


@op("add")
def test_add() -> None:
    assert apply("add", im(3, 8, 8), im(3, 8, 8)) == (im(3, 8, 8),)
    assert apply("add", *[col(64, 16, (8, 8))] * 4) == (col(64, 16, (8, 8)),)
    assert apply("add", col(64, 16, (8, 8)), col(64, 16)) == (col(64, 16),)  # grids disagree: none


@op("add")
def test_add_not_applicable() -> None:
    refuses("add", im(3, 8, 8), im(3, 8, 4), match="add of unequal shapes Im\\[3x8x8\\], Im\\[3x8x4\\]")
    refuses("add", im(3, 8, 8), col(8, 8), match="add of branches in different modes")


@op("concat")
def test_concat() -> None:
    assert apply("concat", im(2, 8, 8), im(3, 8, 8), dim=1, b=2) == (im(5, 8, 8),)
    assert apply("concat", im(2, 8, 8), im(2, 8, 8), im(2, 8, 8), im(2, 8, 8), dim=3, b=4) == (im(2, 8, 32),)
    assert apply("concat", col(64, 8, (8, 8)), col(64, 4, (8, 8)), dim=2, b=2) == (col(64, 12, (8, 8)),)
    assert apply("concat", col(64, 8, (8, 8)), col(64, 8, (8, 8)), dim=1, b=2) == (col(128, 8),)


@op("concat")
def test_concat_not_applicable() -> None:
    refuses("concat", im(2, 8, 8), im(2, 8, 4), dim=1, b=2, match="concat over dim 1 of mismatched")
    refuses("concat", im(2, 8, 8), im(2, 8, 8), dim=1, b=4, match="concat for 4 branches given 2")
    refuses("concat", *[im(2, 8, 8)] * 3, dim=1, b=2, match="concat for 2 branches given 3")
    refuses("concat", col(8, 8), col(8, 8), dim=3, b=2, match="concat over dim 3 of 2-d Col features")
    refuses("concat", im(8, 8, 8), col(8, 8), dim=1, b=2, match="concat of branches in different modes")


@op("matmul")
def test_matmul() -> None:
    assert apply("matmul", col(64, 16, (8, 8)), col(16, 64), scaled=True) == (col(64, 64, (8, 8)),)
    assert apply("matmul", im(4, 5, 6), im(4, 6, 7), scaled=False) == (im(4, 5, 7),)


@op("matmul")
def test_matmul_not_applicable() -> None:
    refuses("matmul", col(64, 16), col(8, 64), scaled=False, match="matmul inner dimensions differ: 16 and 8")
    refuses("matmul", im(4, 5, 6), im(3, 6, 7), scaled=False, match="leading dims differ")
    refuses("matmul", im(1, 8, 8), col(8, 8), scaled=False, match="matmul of branches in different modes")
    refuses("matmul", *[col(8, 8)] * 4, scaled=False, match="matmul takes 2 branches, not 4")


# ---------------------------------------------------------------- routing


@op("identity")
def test_identity() -> None:
    assert apply("identity", im(3, 8, 8)) == (im(3, 8, 8),)
    assert apply("identity", col(64, 16, (8, 8))) == (col(64, 16, (8, 8)),)


@op("permute")
def test_permute() -> None:
    assert apply("permute", im(3, 8, 16), o=(1, 3, 2)) == (im(3, 16, 8),)
    assert apply("permute", im(3, 8, 16), o=(3, 1, 2)) == (im(16, 3, 8),)
    assert apply("permute", col(64, 16, (8, 8)), o=(2, 1)) == (col(16, 64),)  # the grid is gone
    assert apply("permute", col(64, 16, (8, 8)), o=(1, 2)) == (col(64, 16, (8, 8)),)


@op("permute")
def test_permute_not_applicable() -> None:
    refuses("permute", col(64, 16), o=(1, 3, 2), match="permute order \\(1, 3, 2\\) is for 3-d features")
    refuses("permute", im(3, 8, 8), o=(2, 1), match="is for 2-d features")


@op("im2col")
def test_im2col() -> None:
    # (C, H, W) -> (H' W', C k k), H' = (H + 2p - k) // s + 1 (paper eq. 31-32)
    assert apply("im2col", im(3, 32, 32), k=4, s=4, p=0) == (col(64, 48, (8, 8)),)
    assert apply("im2col", im(3, 32, 32), k=3, s=1, p=1) == (col(1024, 27, (32, 32)),)
    assert apply("im2col", im(3, 32, 32), k=3, s=2, p=1) == (col(256, 27, (16, 16)),)
    assert apply("im2col", im(2, 8, 6), k=1, s=2, p=0) == (col(12, 2, (4, 3)),)
    assert apply("im2col", im(3, 8, 8), k=8, s=8, p=0) == (col(1, 192, (1, 1)),)  # kernel = input
    assert apply("im2col", im(3, 6, 6), k=8, s=8, p=1) == (col(1, 192, (1, 1)),)  # fits once padded


@op("im2col")
def test_im2col_not_applicable() -> None:
    refuses("im2col", im(3, 8, 8), k=16, s=16, p=0,
            match="im2col kernel 16 is larger than the padded input 8x8")
    refuses("im2col", im(3, 32, 4), k=8, s=8, p=1, match="larger than the padded input 34x6")
    refuses("im2col", col(64, 16), k=1, s=1, p=0, match="im2col needs an Im feature")


@op("col2im")
def test_col2im() -> None:
    assert apply("col2im", col(64, 48, (8, 8))) == (im(48, 8, 8),)
    assert apply("col2im", col(12, 2, (4, 3))) == (im(2, 4, 3),)
    # im2col then col2im: the grid made by the one is the one the other folds back
    (seq,) = apply("im2col", im(3, 32, 32), k=4, s=4, p=0)
    assert apply("col2im", *apply("linear", seq, d=5)) == (im(5, 8, 8),)


@op("col2im")
def test_col2im_not_applicable() -> None:
    refuses("col2im", col(64, 48), match="col2im without matching im2col geometry")
    refuses("col2im", col(32, 48, (8, 8)), match="col2im without matching im2col geometry")
    refuses("col2im", im(3, 8, 8), match="col2im needs a Col feature")


# ---------------------------------------------------------------- computation


@op("linear")
def test_linear() -> None:
    assert apply("linear", im(3, 8, 8), d=16) == (im(3, 8, 16),)  # acts on the last dimension
    assert apply("linear", col(64, 48, (8, 8)), d=10) == (col(64, 10, (8, 8)),)


@op("norm", "relu", "softmax", "pos-enc")
@pytest.mark.parametrize("name", ["norm", "relu", "softmax", "pos-enc"])
def test_shape_preserving_computation(name: str) -> None:
    assert apply(name, im(3, 8, 8)) == (im(3, 8, 8),)
    assert apply(name, col(64, 16, (8, 8))) == (col(64, 16, (8, 8)),)


@pytest.mark.parametrize("name", ["identity", "permute", "im2col", "col2im", "linear", "norm", "relu",
                                  "softmax", "pos-enc"])
def test_one_to_one_ops_refuse_branches(name: str) -> None:
    args = {"permute": {"o": (1, 2, 3)}, "im2col": {"k": 1, "s": 1, "p": 0}, "linear": {"d": 4}}.get(name, {})
    refuses(name, im(3, 8, 8), im(3, 8, 8), match="takes one feature, not 2 branches", **args)


def test_every_builtin_op_has_a_shape_test() -> None:
    assert set(BUILTIN) == TESTED, set(BUILTIN) - TESTED


# ---------------------------------------------------------------- hyperparameters


@pytest.mark.parametrize("name,args,problems", [
    ("relu", {}, []),
    ("linear", {"d": 64}, []),
    ("im2col", {"k": 3, "s": 1, "p": 0}, []),
    ("relu", {"d": 3}, ['operation "relu" has no hyperparameter "d"; it takes none']),
    ("linear", {"d": 8, "k": 1}, ['operation "linear" has no hyperparameter "k"; it takes d']),
    ("linear", {}, ['operation "linear" needs hyperparameter "d" (a positive integer)']),
    ("im2col", {"k": 3}, ['operation "im2col" needs hyperparameter "s" (a positive integer)',
                          'operation "im2col" needs hyperparameter "p" (a non-negative integer)']),
    ("linear", {"d": 0}, ['"linear" hyperparameter d=0 is not a positive integer']),
    ("linear", {"d": True}, ['"linear" hyperparameter d=true is not a positive integer']),
    ("im2col", {"k": 3, "s": 1, "p": -1}, ['"im2col" hyperparameter p=-1 is not a non-negative integer']),
    ("clone", {"b": 1}, ['"clone" hyperparameter b=1 is not an integer >= 2']),
    ("concat", {"dim": 4, "b": 2}, ['"concat" hyperparameter dim=4 is not 1, 2 or 3']),
    ("group-dim", {"dim": 0, "b": 2}, ['"group-dim" hyperparameter dim=0 is not 1, 2 or 3']),
    ("matmul", {"scaled": 1}, ['"matmul" hyperparameter scaled=1 is not true or false']),
    ("permute", {"o": (1, 1, 2)},
     ['"permute" hyperparameter o=(1, 1, 2) is not a permutation of (1, 2) or (1, 2, 3)']),
    ("permute", {"o": (1, 2, 3, 4)},
     ['"permute" hyperparameter o=(1, 2, 3, 4) is not a permutation of (1, 2) or (1, 2, 3)']),
])
def test_check_args(name: str, args: dict, problems: list[str]) -> None:
    assert BUILTIN[name].check_args(args) == problems


def test_every_op_declares_its_hyperparameters_and_group() -> None:
    expected = {"clone": ("branching", ["b"]), "group-dim": ("branching", ["dim", "b"]),
                "matmul": ("aggregation", ["scaled"]), "add": ("aggregation", []),
                "concat": ("aggregation", ["dim", "b"]), "identity": ("routing", []),
                "permute": ("routing", ["o"]), "im2col": ("routing", ["k", "s", "p"]),
                "col2im": ("routing", []), "linear": ("computation", ["d"]), "norm": ("computation", []),
                "relu": ("computation", []), "softmax": ("computation", []), "pos-enc": ("computation", [])}
    assert {n: (o.group, [p.name for p in o.params]) for n, o in BUILTIN.items()} == expected


# ---------------------------------------------------------------- costs


def cost(name: str, *features: Feature, **args) -> Cost:
    return BUILTIN[name].cost(tuple(features), **args)


def test_linear_cost() -> None:
    # weights in * out plus bias out; a multiply-add counts 2 FLOPs per output element and input
    assert cost("linear", col(10, 16), d=32) == Cost(params=16 * 32 + 32, flops=2 * 10 * 16 * 32)
    assert cost("linear", im(3, 8, 8), d=4) == Cost(params=8 * 4 + 4, flops=2 * 3 * 8 * 8 * 4)


def test_norm_cost() -> None:
    # BatchNorm over C in Im mode, LayerNorm over D in Col mode: a scale and a shift each
    assert cost("norm", im(3, 8, 8)) == Cost(params=2 * 3, flops=2 * 192)
    assert cost("norm", col(10, 16)) == Cost(params=2 * 16, flops=2 * 160)


def test_pos_enc_cost() -> None:
    assert cost("pos-enc", col(10, 16)) == Cost(params=160, flops=160)
    assert cost("pos-enc", im(3, 8, 8)) == Cost(params=192, flops=192)


def test_matmul_cost() -> None:
    # (5 x 4) @ (4 x 6): 5 * 6 outputs of 4 multiply-adds each
    assert cost("matmul", col(5, 4), col(4, 6), scaled=False) == Cost(flops=2 * 5 * 4 * 6)
    assert cost("matmul", im(2, 5, 4), im(2, 4, 6), scaled=True) == Cost(flops=2 * 2 * 5 * 4 * 6)


def test_elementwise_and_free_costs() -> None:
    assert cost("relu", im(3, 8, 8)) == Cost(flops=192)
    assert cost("softmax", col(10, 16)) == Cost(flops=160)
    assert cost("add", im(3, 8, 8), im(3, 8, 8), im(3, 8, 8)) == Cost(flops=2 * 192)
    for name, args in [("identity", {}), ("permute", {"o": (2, 1)}), ("clone", {"b": 2}), ("col2im", {}),
                       ("im2col", {"k": 1, "s": 1, "p": 0}), ("group-dim", {"dim": 2, "b": 2}),
                       ("concat", {"dim": 1, "b": 2})]:
        assert cost(name, col(8, 8, (2, 4)), **args) == Cost(), name


# ---------------------------------------------------------------- features and the library


def test_features() -> None:
    assert feature_for((3, 32, 32)) == im(3, 32, 32) and feature_for((16, 8)) == col(16, 8)
    with pytest.raises(ValueError):
        feature_for((1, 2, 3, 4))
    with pytest.raises(AssertionError):
        Feature((3, 8), IM)
    assert str(col(64, 16, (8, 8))) == "Col[64x16]@8x8" and str(im(3, 8, 8)) == "Im[3x8x8]"
    assert im(3, 8, 8).numel == 192
    assert mode_of((im(3, 8, 8), im(1, 1, 1))) == IM and mode_of((im(3, 8, 8), col(8, 8))) is None
    assert [f.mode for f in representative(None, 3)] == [IM, COL, COL]
    assert representative(COL, 2) == (representative(COL, 1)[0],) * 2


def test_library_is_immutable_and_extends() -> None:
    extra = Op("swish", "computation", (), lambda features: features)
    bigger = BUILTIN.extend([extra])
    assert "swish" in bigger and "swish" not in BUILTIN and len(bigger) == len(BUILTIN) + 1
    with pytest.raises(ValueError, match='operation "relu" is defined twice'):
        BUILTIN.extend([Op("relu", "computation", (), lambda features: features)])
    assert Library(BUILTIN.values()) == BUILTIN
    with pytest.raises(TypeError):
        BUILTIN["x"] = extra  # type: ignore[index]
