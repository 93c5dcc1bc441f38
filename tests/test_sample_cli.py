"""einc sample / einc stats from the command line, including --verify on a user's grammar."""

from __future__ import annotations

import json

from click.testing import CliRunner

from einc.cli import main

LIAR = ["tests/data/plugins/liar.ein", "--plugin", "tests/data/plugins/liar.py"]


def test_sample_prints_canonical_strings_deterministically():
    r1 = CliRunner().invoke(main, ["sample", "einspace", "-n", "5", "--seed", "3", "--input", "3,16,16"])
    r2 = CliRunner().invoke(main, ["sample", "einspace", "-n", "5", "--seed", "3", "--input", "3,16,16"])
    assert r1.exit_code == 0 and r1.output == r2.output and len(r1.output.splitlines()) == 5


def test_sample_json_lines_carry_sizes():
    r = CliRunner().invoke(main, ["sample", "einspace", "-n", "3", "--json", "--input", "1,28,28"])
    rows = [json.loads(line) for line in r.output.splitlines()]
    assert [row["index"] for row in rows] == [0, 1, 2]
    assert all({"arch", "terminals", "nonterminals", "params", "flops", "activations"} <= set(row) for row in rows)


def test_verify_builds_and_runs_every_sample():
    r = CliRunner().invoke(main, ["sample", "einspace", "-n", "25", "--input", "3,16,16", "--verify",
                                  "--max-flops", "20000000"])
    assert r.exit_code == 0, r.output
    assert "verified 25 samples: 25 passed, 0 failed" in r.output


def test_verify_names_the_sample_whose_network_disagrees_with_its_shapes():
    r = CliRunner().invoke(main, ["sample", *LIAR, "-n", "30", "--verify"])
    assert r.exit_code == 1
    failed = [line for line in r.output.splitlines() if "FAILED" in line]
    assert failed and all("liar" in line for line in failed)
    assert "output shape" in failed[0] or "Error" in failed[0]


def test_plugins_are_used_only_when_named():
    r = CliRunner().invoke(main, ["check", "tests/data/plugins/liar.ein"])
    assert r.exit_code == 1 and 'unknown operation "liar"' in r.output


def test_stats_prints_table6_rows():
    r = CliRunner().invoke(main, ["stats", "einspace", "-n", "200", "--p-stop", "0.7", "--input", "3,16,16"])
    assert r.exit_code == 0
    for row in ("terminals", "non-terminals", "branching factor"):
        assert row in r.output


def test_bad_flags_exit_2():
    assert CliRunner().invoke(main, ["sample", "einspace", "--input", "3,x"]).exit_code == 2
    assert CliRunner().invoke(main, ["sample", "einspace", "--p-stop", "1.5"]).exit_code == 2
    assert CliRunner().invoke(main, ["sample", "einspace", "-n", "0"]).exit_code == 2


def test_a_broken_plugin_is_one_located_line(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("OPS = [\n")
    r = CliRunner().invoke(main, ["check", "einspace", "--plugin", str(bad)])
    assert r.exit_code == 1 and "cannot load plugin: SyntaxError" in r.output and "Traceback" not in r.output


def test_sample_names_an_input_of_the_wrong_mode_before_sampling(tmp_path):
    g = tmp_path / "mlp.ein"
    g.write_text("start S(shape=(16, 64))\nS -> sequential: M M\nM(m=Col) -> linear(d in {16, 32}) | relu\n")
    for cmd in ("sample", "stats"):
        r = CliRunner().invoke(main, [cmd, str(g), "--input", "3,8,8", "-n", "2"])
        assert r.exit_code == 1
        assert "the grammar starts in mode Col; the input 3,8,8 is Im" in r.stderr
        assert "raise the budgets" not in r.output


def test_an_unlabelled_alternative_of_several_elements_samples_strings_that_compile(tmp_path):
    g = tmp_path / "conv.ein"
    g.write_text("start S(shape=(3, 8, 8))\nS -> sequential: Conv Conv\n"
                 "Conv -> im2col(k=3, s=1, p=1) linear(d=16) col2im\n")
    r = CliRunner().invoke(main, ["sample", str(g), "-n", "1"])
    assert r.exit_code == 0, r.output
    text = r.output.strip()
    assert text.startswith("sequential(conv(im2col(k=3, s=1, p=1), linear(d=16), col2im), conv(")
    r = CliRunner().invoke(main, ["compile", text, "-g", str(g), "--summary"])
    assert r.exit_code == 0, r.output


def test_check_rejects_labels_that_strings_could_not_tell_apart(tmp_path):
    g = tmp_path / "dup.ein"
    g.write_text("start S(shape=(3, 8, 8))\nS -> pair: M N | pair: N M\nM -> relu | norm\nN -> linear(d=8)\n")
    r = CliRunner().invoke(main, ["check", str(g)])
    assert r.exit_code == 1
    assert r.stderr.startswith(f'{g}:2:18: error: label "pair" names two alternatives of "S"')
    assert "[duplicate-label]" in r.stderr


def test_check_and_sample_refuse_a_device_or_directory_before_reading_it(tmp_path):
    for cmd in ("check", "sample"):
        for path, why in (("/dev/zero", "not a regular file"), (str(tmp_path), "a directory")):
            r = CliRunner().invoke(main, [cmd, path])
            assert r.exit_code == 1 and why in r.stderr and "Traceback" not in r.output, (cmd, path, r.output)
