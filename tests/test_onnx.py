"""ONNX export: the seeds and sampled networks export (opset 18, dynamic batch) and agree with torch.

The full check, every seed and 100 sampled networks, takes minutes:
    .venv/bin/python -m einc.onnx --samples 100
"""

import random
from pathlib import Path

import pytest
from click.testing import CliRunner

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

import onnx  # noqa: E402
import torch  # noqa: E402

import einc  # noqa: E402
from einc.cli import load_plugins, main  # noqa: E402
from einc.onnx import OnnxError, compare, export_onnx  # noqa: E402
from einc.sample import Budget, Sampler  # noqa: E402

pytestmark = pytest.mark.slow  # seconds per export: scheduled first (tests/conftest.py)

G = einc.load("einspace")
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
PLUGINS = Path(__file__).resolve().parent / "data" / "plugins"


def _export_and_compare(arch, shape, tmp_path, classes=10):
    gm = einc.build(arch, shape, num_classes=classes)
    path = export_onnx(gm, shape, tmp_path / "m.onnx", arch=arch)
    model = onnx.load(str(path))
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and not dims[0].dim_value  # the batch axis is symbolic
    assert [d.dim_value for d in dims[1:]] == list(shape)
    for batch in (1, 3):  # neither is the traced batch of 2
        agree = compare(gm, path, shape, batch=batch)
        assert agree.shape[0] == batch
        assert agree.max_rel <= 1e-4, agree


@pytest.mark.parametrize("name", ["resnet18", "vit", "mixer"])  # wrn16_4: resnet18's operations
def test_seeds_export_and_agree(name, tmp_path):
    shape = (3, 64, 64)
    _export_and_compare(G.parse((EXAMPLES / f"{name}.arch").read_text(), shape), shape, tmp_path)


def test_sampled_networks_export_and_agree(tmp_path):
    rng = random.Random(14)
    for shape in ((3, 16, 16), (16, 32)):
        sampler = Sampler(G.table, shape, Budget(max_params=200_000, max_flops=5_000_000, max_nodes=80))
        # one per mode: python -m einc.onnx --samples 100 checks many more
        _export_and_compare(G.architecture(sampler.sample(rng), "Im" if len(shape) == 3 else "Col"), shape, tmp_path)


def test_an_op_without_onnx_conversion_is_one_line_naming_it(tmp_path):
    lib = load_plugins((str(PLUGINS / "cummax.py"),))
    g = einc.load(PLUGINS / "cummax.ein", lib)
    arch = g.parse("sequential(linear(d=8), running-max)", (4, 8))
    with pytest.raises(OnnxError) as e:
        export_onnx(einc.build(arch, (4, 8)), (4, 8), tmp_path / "m.onnx", arch=arch)
    msg = str(e.value)
    assert "\n" not in msg and '"running-max"' in msg and "cummax" in msg, msg
    r = CliRunner().invoke(main, ["compile", "sequential(linear(d=8), running-max)", "-g", str(PLUGINS / "cummax.ein"),
                                  "--plugin", str(PLUGINS / "cummax.py"), "--onnx", str(tmp_path / "c.onnx")])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert len(r.stderr.strip().splitlines()) == 1 and '"running-max"' in r.stderr


def test_a_failed_write_is_one_line(tmp_path, monkeypatch):
    def full(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    arch = G.parse("sequential(linear(d=16), relu)", (4, 8))
    with pytest.raises(OnnxError) as e:
        export_onnx(einc.build(arch, (4, 8)), (4, 8), tmp_path / "none" / "m.onnx")
    assert str(e.value) == f"{tmp_path / 'none' / 'm.onnx'}: error: cannot write: no folder {tmp_path / 'none'}"
    monkeypatch.setattr(torch.onnx.ONNXProgram, "save", full)
    with pytest.raises(OnnxError) as e:
        export_onnx(einc.build(arch, (4, 8)), (4, 8), tmp_path / "m.onnx")
    assert str(e.value) == f"{tmp_path / 'm.onnx'}: error: cannot write: No space left on device"


def test_cli_compile_onnx_prints_the_difference(tmp_path):
    out = tmp_path / "block.onnx"
    r = CliRunner().invoke(main, ["compile", str(EXAMPLES / "resnet_block.arch"), "--input", "64,8,8",
                                  "--classes", "10", "--onnx", str(out)])
    assert r.exit_code == 0, r.output
    assert out.is_file() and "class Net" not in r.stdout  # without -o, the export instead of the source
    assert "largest difference" in r.stderr and "opset 18" in r.stderr
    r = CliRunner().invoke(main, ["compile", str(EXAMPLES / "resnet_block.arch"), "--input", "64,8,8",
                                  "--onnx", str(tmp_path / "no" / "x.onnx")])
    assert r.exit_code == 1 and "cannot write" in r.stderr and "Traceback" not in r.output
