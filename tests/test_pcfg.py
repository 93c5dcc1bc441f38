"""The PCFG analysis (paper A.4): spectral radius, expected sizes, critical probabilities.

Every expected number here is derived by hand in a comment next to it; a Monte-Carlo sampler
written in this file checks the expected sizes against the mean of real derivations.
"""

from __future__ import annotations

import math
import random
import statistics
from pathlib import Path

import pytest

from einc.ein import analyse as analyse_text
from einc.ein import compile_ein
from einc.ops import feature_for, mode_of
from einc.pcfg import analyse, radius
from einc.table import Branches, OpCall, Ref, RuleTable

EINSPACE = Path(__file__).resolve().parent.parent / "grammar" / "einspace.ein"


def report_of(text: str):
    table, diags, report = analyse_text(text, "t.ein")
    assert [d for d in diags if d.severity == "error"] == [], diags
    assert report is not None
    return report


# ---------------------------------------------------------------- einspace (paper A.4)
#
# Per expansion of M (p(M -> C) = 0.32, the rest 0.68 / 3 each), the expected number of M
# children is
#   sequential  M M                       2
#   branching   B {b=2: M, M | M*} A      P(b=2) * 2 + P(b in {4, 8}) * 1 = 1/3 * 2 + 2/3 = 4/3
#               (B(m=Im) has 12 variants, 4 with b=2; B(m=Col) has 9, 3 with b=2: 1/3 either way)
#   routing     R1 M R2                   1
# so rho = 0.68 / 3 * (2 + 4/3 + 1) = 13 * 0.68 / 9 = 0.98222 (the other nonterminals are not
# recursive and add zero eigenvalues). rho < 1 iff (1 - q) * 13 / 9 < 1, q = p(M -> C): the
# critical q is 4/13. Counting the network, a repeated subtree counts once per branch:
# E[copies | branching] = 1/3 * 2 + 1/3 * 4 + 1/3 * 8 = 14/3, so the network radius is
# (1 - q) / 3 * (2 + 14/3 + 1) = (1 - q) * 23 / 9 = 1.7378 at q = 0.32: infinite expected
# network size; finite above q = 14/23.
#
# Expected expansions: S gives 13/9 M on average (uniform over the same three bodies), so
# N(M) = (13/9) / (1 - rho) = 81.25; N(B) = N(A) = N(R1) = N(R2) = 1/3 + 0.68/3 * 81.25 = 18.75;
# N(C) = 0.32 * 81.25 = 26. Every B, A, R1, R2, C expansion is one operation: 4 * 18.75 + 26 = 101
# terminals; nonterminals 1 + 81.25 + 4 * 18.75 + 26 = 183.25.


@pytest.fixture(scope="module")
def einspace():
    table = compile_ein(EINSPACE.read_text(encoding="utf-8"), str(EINSPACE))
    return table, analyse(table, "Im")


def test_einspace_spectral_radius(einspace) -> None:
    _, report = einspace
    assert report.rho == pytest.approx(13 * 0.68 / 9, abs=1e-6)


def test_the_radius_alone_is_analyses_rho_and_a_compiled_grammar_keeps_its_report() -> None:
    for path in [*sorted((Path(__file__).parent / "data" / "ein" / "good").glob("*.ein")), EINSPACE]:
        table = compile_ein(path.read_text(encoding="utf-8"), str(path))
        mode = table.start.mode
        assert radius(table, mode) == pytest.approx(analyse(table, mode).rho, abs=1e-12), path
        assert table.cache["report"].rho == pytest.approx(analyse(table, mode).rho, abs=1e-12), path


def test_einspace_critical_probabilities(einspace) -> None:
    _, report = einspace
    assert set(report.critical) == {"M"}
    consistency, network, now = report.critical["M"]
    assert consistency == pytest.approx(4 / 13, abs=1e-6)
    assert network == pytest.approx(14 / 23, abs=1e-6)
    assert now == pytest.approx(0.32, abs=1e-12)


def test_einspace_network_size_is_infinite(einspace) -> None:
    _, report = einspace
    assert report.rho_network == pytest.approx(0.68 * 23 / 9, abs=1e-6)
    assert math.isinf(report.network_terminals)


def test_einspace_expected_sizes(einspace) -> None:
    _, report = einspace
    assert report.expansions == pytest.approx(
        {"S": 1, "M": 81.25, "B": 18.75, "A": 18.75, "R1": 18.75, "R2": 18.75, "C": 26}, abs=1e-6)
    assert report.expected_nonterminals == pytest.approx(183.25, abs=1e-6)
    assert report.expected_terminals == pytest.approx(101, abs=1e-6)


def test_einspace_radius_does_not_depend_on_the_start_mode(einspace) -> None:
    # In Col mode B has 9 variants, 3 with b=2: the same 1/3 as in Im mode.
    table, _ = einspace
    assert analyse(table, "Col").rho == pytest.approx(13 * 0.68 / 9, abs=1e-6)


# ---------------------------------------------------------------- small grammars by hand

# Binary splitting. E (rows: expanding nonterminal, columns: expected children):
#   S: M 1        M: M 2 * 0.3 = 0.6
# Eigenvalues 0 and 0.6: rho = 0.6. N = (I - E)^-1 from S: S 1, M 1 / (1 - 0.6) = 2.5.
# Terminals: M expands to relu with 0.7: 2.5 * 0.7 = 1.75 (= internal nodes 2.5 * 0.3 + 1).
# No repetition, so the network has the same 1.75 operations. Critical p(M -> relu): the
# radius is 2 (1 - q) < 1 iff q > 1/2, for both the derivation and the network.
SPLIT = """\
start S(shape=(3, 8, 8))
S -> M
M -> M M @ 0.3
   | relu @ 0.7
"""


def test_split_grammar() -> None:
    r = report_of(SPLIT)
    assert r.rho == pytest.approx(0.6, abs=1e-9)
    assert r.rho_network == pytest.approx(0.6, abs=1e-9)
    assert r.expansions == pytest.approx({"S": 1.0, "M": 2.5}, abs=1e-9)
    assert r.expected_nonterminals == pytest.approx(3.5, abs=1e-9)
    assert r.expected_terminals == pytest.approx(1.75, abs=1e-9)
    assert r.network_terminals == pytest.approx(1.75, abs=1e-9)
    consistency, network, now = r.critical["M"]
    assert consistency == pytest.approx(0.5, abs=1e-9) and network == pytest.approx(0.5, abs=1e-9)
    assert now == pytest.approx(0.7)


# Branching with repetition, in Col mode. M's alternatives after op variants:
#   sequential   M C                            0.2     children M 1, C 1; ops 0
#   clone(b=2)   {b=2: M, M} add                0.1     children M 2 (network 2); ops 2
#   clone(b=4)   {b=4: M*} add                  0.1     children M 1 (network 4); ops 2
#   C                                           0.6     children C 1; ops 0
# C -> 4 ops, 1/4 each: one op per expansion.
# Derivation: E[M, M] = 0.2 + 0.1 * 2 + 0.1 * 1 = 0.5, E[M, C] = 0.2 + 0.6 = 0.8; rho = 0.5.
#   N from S: S 1, M 1 / (1 - 0.5) = 2, C 0.8 * 2 = 1.6; nonterminals 4.6;
#   terminals: M 2 * (0.1 * 2 + 0.1 * 2) + C 1.6 * 1 = 0.8 + 1.6 = 2.4.
# Network: E[M, M] = 0.2 + 0.1 * 2 + 0.1 * 4 = 0.8, E[M, C] = 0.8; rho_network = 0.8.
#   M 1 / (1 - 0.8) = 5, C 0.8 * 5 = 4: operations 5 * 0.4 + 4 * 1 = 6.
# Critical q = p(M -> C), the others keeping their ratio 0.5 : 0.25 : 0.25:
#   derivation (1 - q) * (0.5 * 1 + 0.25 * 2 + 0.25 * 1) = (1 - q) * 1.25 < 1 iff q > 0.2;
#   network    (1 - q) * (0.5 * 1 + 0.25 * 2 + 0.25 * 4) = (1 - q) * 2    < 1 iff q > 0.5.
BRANCHY = """\
start S(shape=(16, 8))
S -> M
M -> sequential: M C                                        @ 0.2
   | branching: clone(b in {2, 4}) {b=2: M, M | b=4: M*} add  @ 0.2
   | C                                                      @ 0.6
C -> relu | norm | identity | softmax
"""


def test_branchy_grammar() -> None:
    r = report_of(BRANCHY)
    assert r.start_mode == "Col"
    assert r.rho == pytest.approx(0.5, abs=1e-9)
    assert r.expansions == pytest.approx({"S": 1.0, "M": 2.0, "C": 1.6}, abs=1e-9)
    assert r.expected_nonterminals == pytest.approx(4.6, abs=1e-9)
    assert r.expected_terminals == pytest.approx(2.4, abs=1e-9)
    assert r.rho_network == pytest.approx(0.8, abs=1e-9)
    assert r.network_terminals == pytest.approx(6.0, abs=1e-9)
    consistency, network, now = r.critical["M"]
    assert consistency == pytest.approx(0.2, abs=1e-9)
    assert network == pytest.approx(0.5, abs=1e-9)
    assert now == pytest.approx(0.6)


# Repetition with a finite-variance network size (for the Monte-Carlo test below):
#   relu M       0.3   children M 1 (network 1); ops 1
#   clone(b=2) {b=2: M*} add   0.1   children M 1 (network 2); ops 2
#   norm         0.6   ops 1
# Derivation: E[M, M] = 0.3 + 0.1 = 0.4 = rho; N(M) = 1 / 0.6 = 5/3; nonterminals 1 + 5/3 = 8/3;
#   ops per M expansion 0.3 + 0.2 + 0.6 = 1.1, terminals 5/3 * 1.1 = 11/6.
# Network: E[M, M] = 0.3 + 0.1 * 2 = 0.5; N(M) = 2; operations 2 * 1.1 = 2.2.
# Critical p(M -> norm), the others keeping 0.75 : 0.25: derivation (1 - q) * 1 < 1 for any
#   q > 0; network (1 - q) * (0.75 + 0.25 * 2) = 1.25 (1 - q) < 1 iff q > 0.2.
REPEAT = """\
start S(shape=(16, 8))
S -> M
M -> relu M @ 0.3
   | branching: clone(b=2) {b=2: M*} add @ 0.1
   | norm @ 0.6
"""


def test_repeat_grammar() -> None:
    r = report_of(REPEAT)
    assert r.rho == pytest.approx(0.4, abs=1e-9)
    assert r.rho_network == pytest.approx(0.5, abs=1e-9)
    assert r.expansions == pytest.approx({"S": 1.0, "M": 5 / 3}, abs=1e-9)
    assert r.expected_nonterminals == pytest.approx(8 / 3, abs=1e-9)
    assert r.expected_terminals == pytest.approx(11 / 6, abs=1e-9)
    assert r.network_terminals == pytest.approx(2.2, abs=1e-9)
    consistency, network, now = r.critical["M"]
    assert consistency == pytest.approx(0.0, abs=1e-8)  # radii within 1e-9 of 1 count as 1
    assert network == pytest.approx(0.2, abs=1e-8)
    assert now == pytest.approx(0.6)


# Inherited parameters split one nonterminal into states. With level=1, M either stops (norm)
# or emits relu and continues as M[level=2]; with level=2 it splits or stops:
#   E[M1, M2] = 0.5,  E[M2, M2] = 2 * 0.25 = 0.5;  rho = 0.5.
#   N: S 1, M1 1, M2 0.5 / (1 - 0.5) = 1: expansions of M = 2, nonterminals 3.
#   Terminals: M1 always one op (relu or norm): 1; M2 relu with 0.75: 0.75; total 1.75.
LEVELS = """\
param level in {1, 2}
start S(shape=(3, 8, 8), level=1)
S -> M
M(level=1) -> relu M[level=2] | norm
M(level=2) -> M M @ 0.25 | relu @ 0.75
"""


def test_parameter_states_grammar() -> None:
    r = report_of(LEVELS)
    assert r.rho == pytest.approx(0.5, abs=1e-9)
    assert r.expansions == pytest.approx({"S": 1.0, "M": 2.0}, abs=1e-9)
    assert r.expected_nonterminals == pytest.approx(3.0, abs=1e-9)
    assert r.expected_terminals == pytest.approx(1.75, abs=1e-9)
    assert r.network_terminals == pytest.approx(1.75, abs=1e-9)


# A non-recursive grammar: E is nilpotent, rho = 0 and there is no critical probability.
#   S -> A A, A -> relu | linear(d=8) linear(d=4) (1/2 each): N(A) = 2, terminals 2 * 1.5 = 3.
def test_non_recursive_grammar() -> None:
    r = report_of("start S(shape=(3, 8, 8))\nS -> A A\nA -> relu | linear(d=8) linear(d=4)\n")
    assert r.rho == 0 and r.critical == {}
    assert r.expansions == pytest.approx({"S": 1.0, "A": 2.0})
    assert r.expected_terminals == pytest.approx(3.0) and r.network_terminals == pytest.approx(3.0)


# At p(M -> relu) = 0.5 the split grammar is critical: rho = 1, sizes infinite.
def test_critical_grammar_is_reported_inconsistent() -> None:
    table, diags, report = analyse_text(SPLIT.replace("0.3", "0.5").replace("0.7", "0.5"), "t.ein")
    assert [d.code for d in diags] == ["inconsistent"]
    assert report.rho == pytest.approx(1.0, abs=1e-9)
    assert math.isinf(report.expected_nonterminals) and math.isinf(report.network_terminals)
    assert all(math.isinf(v) for v in report.expansions.values())


# Exactly critical network, where numpy's eigvals gives 1 - 1e-16 and I - E_net is singular
# (this used to raise LinAlgError from einc check). Network: A -> B 0.8, A -> A 0.2, B -> C 1,
# C -> A 0.5 * 2 copies = 1: det(lambda I - E) = lambda^3 - 0.2 lambda^2 - 0.8, root lambda = 1.
# Derivation (C -> A 0.5): N(A) = 1 + 0.2 N(A) + 0.5 N(C), N(B) = N(C) = 0.8 N(A), so
# N(A) = 1 / 0.4 = 2.5, N(B) = N(C) = 2; nonterminals 1 + 2.5 + 2 + 2 = 7.5; operations
# A 2.5 * 0.2 (relu) + C 2 * (0.5 * 2 + 0.5 * 1) = 0.5 + 3 = 3.5. rho solves
# lambda^3 = 0.2 lambda^2 + 0.4: about 0.81.
CRITICAL_NETWORK = """\
start S(shape=(16, 8))
S -> A
A -> B @ 0.8 | relu A @ 0.2
B -> C
C -> clone(b=2) {b=2: A*} add @ 0.5 | relu @ 0.5
"""


def test_exactly_critical_network_is_infinite_not_a_crash() -> None:
    r = report_of(CRITICAL_NETWORK)
    assert r.rho_network == 1.0 and math.isinf(r.network_terminals)
    assert r.rho == pytest.approx(0.8098, abs=1e-3)
    assert r.expansions == pytest.approx({"S": 1, "A": 2.5, "B": 2, "C": 2}, abs=1e-9)
    assert r.expected_nonterminals == pytest.approx(7.5) and r.expected_terminals == pytest.approx(3.5)


# ---------------------------------------------------------------- Monte Carlo


def sample(table: RuleTable, rng: random.Random) -> tuple[int, int, int]:
    """One derivation from the start: (nonterminals, operations, network operations).

    The grammar's operations must accept any input (true of relu/norm/identity/softmax, clone
    and add of equal shapes), so no alternative is ever filtered for shape.
    """
    counts = [0, 0, 0]

    def expand(name: str, features: tuple, params: dict, copies: int) -> tuple:
        env = {"m": mode_of(features), "b": len(features), **params}
        rule = table.rule_for(name, env)
        alt = rng.choices(rule.alternatives, weights=[a.prob for a in rule.alternatives])[0]
        counts[0] += 1
        for el in alt.body:
            env = {"m": mode_of(features), "b": len(features), **params}
            if isinstance(el, OpCall):
                counts[1] += 1
                counts[2] += copies
                features = table.library[el.op].apply(features, el.args)
            elif isinstance(el, Ref):
                features = expand(el.name, features, {**params, **dict(el.sets)}, copies)
            else:
                assert isinstance(el, Branches)
                arm = el.arm_for(env)
                if arm.repeated:
                    out = expand(arm.items[0].name, features[:1], params, copies * len(features))
                    features = out * len(features)
                else:
                    features = tuple(f for ref, x in zip(arm.items, features, strict=True)
                                     for f in expand(ref.name, (x,), params, copies))
        return features

    expand(table.start.symbol, (feature_for(table.start.shape),), dict(table.start.params), 1)
    return counts[0], counts[1], counts[2]


def mean_and_tolerance(values: list[float], k: float = 5.0) -> tuple[float, float]:
    """The sample mean and k standard errors of it."""
    return statistics.fmean(values), k * statistics.stdev(values) / math.sqrt(len(values))


# Which sizes to compare: (derivation nonterminals, derivation operations, network operations).
# The network size of BRANCHY has infinite variance (a factor-4 repeated subtree is 4 perfectly
# correlated copies: E[sum of squared copy counts] = 0.2 + 0.1 * 2 + 0.1 * 16 = 2 >= 1), so no
# standard error bounds its sample mean; REPEAT has 0.3 + 0.1 * 4 = 0.7 < 1 and is used instead.
MONTE_CARLO = {"split": (SPLIT, (True, True, True)), "branchy": (BRANCHY, (True, True, False)),
               "repeat": (REPEAT, (True, True, True)), "levels": (LEVELS, (True, True, True))}


@pytest.mark.parametrize("name", list(MONTE_CARLO))
def test_monte_carlo_sizes_match_expectations(name: str) -> None:
    text, compare = MONTE_CARLO[name]
    table = compile_ein(text, "t.ein")
    report = analyse(table, table.start.mode)
    rng = random.Random(20240611)
    runs = [sample(table, rng) for _ in range(2000)]
    expected = [report.expected_nonterminals, report.expected_terminals, report.network_terminals]
    for index in [i for i, c in enumerate(compare) if c]:
        mean, tol = mean_and_tolerance([r[index] for r in runs])
        # 5 standard errors: a false failure has probability ~6e-7 (normal approximation). The
        # sizes are heavy-tailed, so with 2000 samples that is 5-25% of the mean: enough to
        # catch a miscount such as counting a repeated subtree once, or a wrong E entry.
        assert tol < 0.25 * expected[index]
        assert abs(mean - expected[index]) < tol, (index, mean, expected[index], tol)
    mean, tol = mean_and_tolerance([r[0] + r[1] for r in runs])
    assert abs(mean - (report.expected_nonterminals + report.expected_terminals)) < tol
