"""einc search --objective FILE.py:FUNC: the CLI over the same search as einc.search."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from einc.cli import main

from conftest import evals

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_cli_scores_candidates_with_a_file_objective(tmp_path):
    (tmp_path / "obj.py").write_text(textwrap.dedent('''
        def f(arch, ctx):
            (ctx.folder / "seen").write_text(str(ctx.input_shape))
            return {"score": arch.infer(ctx.input_shape).params, "epochs": ctx.epochs}
    '''))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "einc.cli", "search", "--objective", "obj.py:f", "--input", "3,8,8",
           "--minimize", "--strategy", "rs", "--budget", "4", "--epochs", "2", "--workers", "2", "--seed", "1",
           "--max-params", "100000", "--max-flops", "5000000", "--out", "run"]
    p = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert p.returncode == 0, p.stderr
    assert "rs with objective" in p.stdout and "(minimised, input 3x8x8): 4 evaluated (0 failed)" in p.stdout
    rs = evals(tmp_path / "run")
    best = min(r["metrics"]["score"] for r in rs)
    assert f"score {best:g}" in p.stdout and all(r["metrics"]["epochs"] == 2 for r in rs)
    assert (tmp_path / "run" / "trials" / "3" / "seen").read_text() == "(3, 8, 8)"
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["objective"] == f"{tmp_path / 'obj.py'}:f" and saved["data"] is None and saved["minimize"]
    resumed = subprocess.run([sys.executable, "-m", "einc.cli", "search", "--out", "run", "--resume"],
                             check=False, capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert f"score {best:g}" in resumed.stdout and len(evals(tmp_path / "run")) == 4


def test_cli_objective_errors_are_one_line(tmp_path, monkeypatch):
    (tmp_path / "obj.py").write_text("def f(arch, ctx):\n    return 1\n")
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    r = runner.invoke(main, ["search", "--input", "3,8,8", "--out", "x"])
    assert r.exit_code == 2 and "apply to --objective only" in r.output
    r = runner.invoke(main, ["search", "--objective", "obj.py:g", "--input", "3,8,8", "--out", "x"])
    assert r.exit_code == 1
    assert r.output.strip().splitlines()[-1] == f"{tmp_path / 'obj.py'}: error: no function g in it"
    assert not (tmp_path / "x").exists()
    r = runner.invoke(main, ["search", "--objective", "obj.py:f", "--out", "x"])
    assert r.exit_code == 1 and "needs the candidates' input shape" in r.output
