"""One formatter for the whole report: levels bare, changes signed, missing values named."""

from specfair.analysis.format import bounds, interval, num, rho_p, speedups


def test_levels_bare_changes_signed_missing_named():
    assert num(0.25) == "0.250" and num(0.25, sign=True) == "+0.250" and num(-0.25, sign=True) == "-0.250"
    assert num(-0.25) == "-0.250"  # a negative level keeps its minus
    assert num(1.5, 2) == "1.50" and num(None) == "n/a" and num(None, sign=True) == "n/a"
    cell = {"value": 0.1, "low": -0.02, "high": 0.2}
    assert interval(cell, sign=True) == "+0.100 [-0.020, +0.200]"
    assert interval(cell) == "0.100 [-0.020, 0.200]"
    assert interval(None) == "missing" and interval({"value": None}, missing="n/a") == "n/a"
    assert interval({"value": 0.1, "low": None, "high": None}) == "0.100 [n/a, n/a]"
    assert bounds(cell, sign=True) == "[-0.020, +0.200]"


def test_speedups_and_rank_correlations():
    assert speedups(1.5, 2.0) == "1.50× → 2.00×"
    assert speedups(1.5, None) == "1.50× → not timed"
    assert speedups(None, None) == "not timed"
    assert rho_p({"rho": 0.8, "p_value": 0.031}) == "+0.80 (0.03)"
    assert rho_p({"rho": None, "p_value": None}) == "n/a"
