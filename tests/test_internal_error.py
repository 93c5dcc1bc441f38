"""A bug in einc itself keeps its traceback and ends in "INTERNAL ERROR", exit 70; a user's error
(a malformed architecture, a plugin's own failing code) stays one located line."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

import einc
from einc.cli import INTERNAL_ERROR, main
from einc.errors import LoweringError
from einc.lower import lower
from einc.ops import BUILTIN, IM, Feature, Op, OpError, is_builtin
from einc.tree import Leaf

ARCH = "sequential(relu, relu)"


@pytest.fixture
def broken_relu():
    """Makes the built-in relu's ``hook`` raise a plain RuntimeError (an einc bug), then mends it."""
    relu = BUILTIN["relu"]
    saved = {}

    def breaking(hook: str) -> None:
        def boom(*args, **kwargs):
            raise RuntimeError(f"einc's own {hook} bug")

        saved[hook] = getattr(relu, hook)
        object.__setattr__(relu, hook, boom)  # a frozen Op: only the test may do this

    yield breaking
    for hook, f in saved.items():
        object.__setattr__(relu, hook, f)


def _internal(r) -> None:
    assert r.exit_code == INTERNAL_ERROR == 70, r.output
    assert "Traceback (most recent call last)" in r.stderr
    assert r.stderr.rstrip().splitlines()[-1] == (
        f"einc: INTERNAL ERROR (einc {einc.__version__}): this is a bug in einc, not in your input; "
        "please report it with the command and the traceback above")


def test_a_builtin_ops_failing_shape_rule_is_an_internal_error(broken_relu):
    broken_relu("infer")
    with pytest.raises(RuntimeError, match="einc's own infer bug"):  # not disguised as an OpError
        BUILTIN["relu"].apply((Feature((3, 8, 8), IM),), ())
    r = CliRunner().invoke(main, ["compile", ARCH, "--input", "3,8,8", "--summary"])
    _internal(r)
    assert "RuntimeError: einc's own infer bug" in r.stderr


def test_a_builtin_ops_failing_lowering_is_an_internal_error(broken_relu):
    broken_relu("lower")
    with pytest.raises(RuntimeError, match="einc's own lower bug"):  # not disguised as a LoweringError
        lower(Leaf("relu"), BUILTIN, (3, 8, 8))
    r = CliRunner().invoke(main, ["compile", ARCH, "--input", "3,8,8"])
    _internal(r)
    assert "RuntimeError: einc's own lower bug" in r.stderr


def test_a_bug_in_the_compiler_is_an_internal_error(monkeypatch):
    def boom(*args, **kwargs):
        raise KeyError("emit")

    monkeypatch.setattr("einc.emit.emit", boom)
    _internal(CliRunner().invoke(main, ["compile", ARCH, "--input", "3,8,8"]))


def test_only_the_builtin_objects_are_builtin():
    relu = BUILTIN["relu"]
    assert is_builtin(relu) and all(is_builtin(op) for op in BUILTIN.values())
    assert not is_builtin(Op("relu", "computation", (), relu.infer, lower=relu.lower))  # a user's, same name
    assert not is_builtin(Op("mine", "computation", (), relu.infer))


PLUGIN = '''
from einc.ops import Op


def _shape(features):
    if features[0].shape == (4, 8):  # fine on the analysis's stand-in features, fails on the real input
        return features[0].shape[0] / 0
    return features


def _same(features):
    return features


def _lower(ctx, nodes, features):
    raise RuntimeError("the plugin's lowering broke")


OPS = [Op("boom", "computation", (), _shape, effect=lambda mode, b: (mode, b)),
       Op("boomlow", "computation", (), _same, lower=_lower)]
'''


def test_a_plugins_failing_hook_stays_one_line_naming_the_op(tmp_path):
    plugin = tmp_path / "boom.py"
    plugin.write_text(PLUGIN)
    grammar = tmp_path / "boom.ein"
    grammar.write_text("start S(shape=(4, 8))\nS -> sequential: M M\nM -> relu | boom | boomlow\n")
    common = ["-g", str(grammar), "--plugin", str(plugin)]
    r = CliRunner().invoke(main, ["compile", "sequential(relu, boom)", *common])
    assert r.exit_code == 1, r.output
    assert "Traceback" not in r.output and "INTERNAL ERROR" not in r.output
    assert 'operation "boom": its shape rule failed on Col[4x8]: ZeroDivisionError' in r.stderr
    assert len(r.stderr.splitlines()) == 1, r.stderr
    r = CliRunner().invoke(main, ["compile", "sequential(relu, boomlow)", *common])
    assert r.exit_code == 1, r.output
    assert "Traceback" not in r.output and "INTERNAL ERROR" not in r.output
    assert r.stderr == ('lowering "boomlow" failed: RuntimeError: the plugin\'s lowering broke (at node /1/0)\n')


def test_the_api_still_raises_one_einc_error_for_a_plugins_hook():
    def boom(features):
        return 1 / 0

    with pytest.raises(OpError, match='operation "mine": its shape rule failed'):
        Op("mine", "computation", (), boom).apply((Feature((3, 8, 8), IM),), ())
    bad = Op("mine", "computation", (), lambda features: features, lower=lambda ctx, nodes, features: 1 / 0)
    with pytest.raises(LoweringError, match='lowering "mine" failed: ZeroDivisionError'):
        lower(Leaf("mine"), BUILTIN.extend([bad]), (3, 8, 8))


def test_user_errors_stay_one_line_and_usage_errors_exit_2():
    r = CliRunner().invoke(main, ["compile", "sequential(relu, relu", "--input", "3,8,8"])
    assert r.exit_code == 1 and "Traceback" not in r.output and "INTERNAL ERROR" not in r.output
    assert r.stderr.startswith("1:") and "[arch-syntax]" in r.stderr.splitlines()[0], r.stderr
    r = CliRunner().invoke(main, ["compile", ARCH, "--input", "3,0,8"])
    assert r.exit_code == 2 and "Traceback" not in r.output and "INTERNAL ERROR" not in r.output
    r = CliRunner().invoke(main, ["compile", "--help"])
    assert r.exit_code == 0 and "Usage" in r.output


def test_a_ctrl_c_while_a_command_imports_is_interrupted_not_a_traceback(monkeypatch):
    """``einc search`` imports the runtime when it runs (a third of a second, more under load): a
    Ctrl-C then is the same "interrupted", exit 130, as one during the search."""
    import einc.cli

    class Importing:
        @staticmethod
        def import_module(name):
            raise KeyboardInterrupt

    monkeypatch.setattr(einc.cli, "importlib", Importing)
    r = CliRunner().invoke(main, ["search", "--out", "x"])
    assert r.exit_code == 130 and r.stderr.strip() == "interrupted", r.output
    assert "Traceback" not in r.output
