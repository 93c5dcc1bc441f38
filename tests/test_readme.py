"""The documentation runs as written: README.md's Python examples and seed table, and every
console example of grammar/README.md, its tutorial included, with the output it shows."""

from __future__ import annotations

import doctest
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import settings

import einc

pytestmark = pytest.mark.slow  # a real search (the tutorial's): scheduled first (tests/conftest.py)

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
GRAMMAR_README = (ROOT / "grammar" / "README.md").read_text(encoding="utf-8")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def section(text: str, title: str, level: int | None = None) -> str:
    """The text under a heading, up to the next heading of ``level`` or higher (default: the
    heading's own); lines inside code blocks are not headings."""
    lines, inside, start, depth = text.splitlines(keepends=True), False, None, 0
    for i, line in enumerate(lines):
        if line.startswith("```"):
            inside = not inside
        heading = re.match(r"(#+) (.*)\n", line) if not inside else None
        if heading and start is None and heading[2] == title:
            start, depth = i + 1, level or len(heading[1])
        elif heading and start is not None and len(heading[1]) <= depth:
            return "".join(lines[start:i])
    assert start is not None, f"no section {title!r}"
    return "".join(lines[start:])


def blocks(text: str, lang: str) -> list[str]:
    return [body for kind, body in FENCE.findall(text) if kind == lang]


# ---------------------------------------------------------------- README.md


def test_readme_python_examples_run_as_written(tmp_path, monkeypatch, capsys):
    """The "From Python" examples, in one namespace, in a folder with the repository's examples
    and a "my_space.ein" of one's own; the Hypothesis test they define then runs too."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    shutil.copy(ROOT / "tests" / "data" / "ein" / "good" / "conv_residual.ein", tmp_path / "my_space.ein")
    code = blocks(section(README, "From Python", level=2), "python")
    assert len(code) >= 2
    namespace: dict = {"__name__": "readme"}
    for block in code:
        exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 - our own documentation
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "4367872"  # the comment beside the print says so
    assert printed[1] == str(namespace["small"]) and printed[2] == str(namespace["g"].architecture(namespace["child"]))
    tests = [v for k, v in namespace.items() if k.startswith("test_") and callable(v)]
    assert tests, "the property-testing example defines a test"
    for test in tests:
        settings(max_examples=5, deadline=None)(test)()


def test_readme_seed_table_gives_the_true_parameter_counts():
    g = einc.load("einspace")
    rows = re.findall(r"^\| `(\w+)\.arch`[^|]*\| ([\d,]+)(?: \(([\d,]+)\))? \|", README, re.MULTILINE)
    assert {name for name, _, _ in rows} >= {"resnet18", "wrn16_4", "vit", "mixer", "resnet_small"}
    for name, params, with_head in rows:
        arch = g.parse((ROOT / "examples" / f"{name}.arch").read_text(), (3, 64, 64))
        inf = arch.infer((3, 64, 64))
        assert f"{inf.params:,}" == params, name
        if with_head:
            out = inf.output[0]
            width = out.shape[0] if out.mode == "Im" else out.shape[-1]
            assert f"{inf.params + width * 10 + 10:,}" == with_head, name


# ---------------------------------------------------------------- grammar/README.md


def console_examples(text: str) -> list[tuple[str, str]]:
    """(command, output shown) for each "$ einc ..." line of each console block."""
    out = []
    for body in blocks(text, "console") + [b for b in blocks(text, "") if b.startswith("$ einc ")]:
        for chunk in re.split(r"^\$ ", body, flags=re.MULTILINE)[1:]:
            command, _, shown = chunk.partition("\n")
            out.append((command, shown))
    return out


def run_einc(command: str, cwd: Path) -> str:
    """A documented command run as a user would, stdout and stderr interleaved."""
    args = shlex.split(command)
    assert args[0] == "einc", command
    env = dict(os.environ, PYTHONUNBUFFERED="1", COLUMNS="100")
    proc = subprocess.run([sys.executable, "-m", "einc.cli", *args[1:]], check=False, cwd=cwd, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300)
    return proc.stdout


def same(shown: str, got: str) -> bool:
    return doctest.OutputChecker().check_output(shown, got, doctest.ELLIPSIS)


TUTORIAL = section(GRAMMAR_README, "Tutorial: a space of your own")


def test_the_tutorial_runs_as_shown(tmp_path):
    """Each version of tiny.ein is written where it is shown; each command runs on the latest."""
    steps = [(kind, body) for kind, body in FENCE.findall(TUTORIAL) if kind in ("ein", "console")]
    assert [k for k, _ in steps].count("ein") == 3
    commands = 0
    for kind, body in steps:
        if kind == "ein":
            name = body.splitlines()[0].removeprefix("# ")
            (tmp_path / name).write_text(body, encoding="utf-8")
            continue
        for command, shown in console_examples(f"```console\n{body}```\n"):
            got = run_einc(command, tmp_path)
            assert same(shown, got), f"$ {command}\nshown:\n{shown}\ngot:\n{got}"
            commands += 1
    assert commands >= 6
    best = (tmp_path / "runs" / "tiny" / "best.arch").read_text()
    assert einc.load(tmp_path / "tiny.ein").parse(best, (2, 8, 8)).text


def test_the_other_console_examples_run_as_shown():
    rest = GRAMMAR_README.replace(TUTORIAL, "")
    examples = console_examples(rest)
    assert examples
    for command, shown in examples:
        got = run_einc(command, ROOT)
        assert same(shown, got), f"$ {command}\nshown:\n{shown}\ngot:\n{got}"


def test_every_complete_grammar_example_checks_and_round_trips():
    """The examples that start with a start declaration are whole grammars (the rest are
    fragments of einspace)."""
    rest = GRAMMAR_README.replace(TUTORIAL, "")  # the tutorial shows a bad version on purpose
    whole = [b for b in blocks(rest, "") + blocks(rest, "ein")
             if "start " in b and "->" in b and not b.lstrip().startswith("start S(shape=(3, 32, 32))\nM ->")]
    assert len(whole) >= 3
    for text in whole:
        g = einc.compile_grammar(text, "example.ein")
        for seed in range(3):
            arch = g.sample(seed=seed)
            assert g.parse(arch.text) == arch
