"""Intervals over seeds: the t quantiles against the standard table, and the paired comparison."""

from __future__ import annotations

import math

import pytest

from kdatlas.stats import Interval, mean_interval, paired_difference, t_cdf, t_quantile

# t(0.975, df), the two-sided 95% critical values of any statistics table.
T_TABLE = {1: 12.7062, 2: 4.3027, 3: 3.1824, 4: 2.7764, 5: 2.5706, 9: 2.2622, 19: 2.0930, 30: 2.0423}


@pytest.mark.parametrize(("df", "expected"), T_TABLE.items())
def test_t_quantiles_match_the_table(df: int, expected: float) -> None:
    assert t_quantile(0.975, df) == pytest.approx(expected, abs=1e-4)


def test_t_cdf_is_symmetric_and_cauchy_at_one_degree() -> None:
    assert t_cdf(0.0, 3) == pytest.approx(0.5)
    assert t_cdf(-1.3, 5) == pytest.approx(1 - t_cdf(1.3, 5))
    assert t_cdf(1.0, 1) == pytest.approx(0.75, abs=1e-9)  # Cauchy: 1/2 + atan(1)/π


def test_the_interval_is_mean_plus_minus_t_times_standard_error() -> None:
    values = [0.20, 0.25, 0.30]
    interval = mean_interval(values)
    half = 4.302653 * 0.05 / math.sqrt(3)  # s = 0.05
    assert interval.mean == pytest.approx(0.25)
    assert (interval.low, interval.high) == (pytest.approx(0.25 - half, abs=1e-6), pytest.approx(0.25 + half, abs=1e-6))


def test_one_seed_has_no_interval_and_separates_nothing() -> None:
    assert mean_interval([0.3]) == Interval(0.3, None, None, 1)
    assert not mean_interval([0.3]).excludes_zero


def test_pairing_removes_what_the_seeds_share() -> None:
    """Seed-to-seed spread is large, the per-seed gain small and steady: unpaired intervals
    overlap, the paired difference excludes 0."""
    baseline = [0.20, 0.30, 0.40]
    distilled = [0.22, 0.325, 0.415]
    assert mean_interval(distilled).low < mean_interval(baseline).high
    difference = paired_difference(distilled, baseline)
    assert difference.mean == pytest.approx(0.02)
    assert difference.excludes_zero and difference.low > 0


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="no values"):
        mean_interval([])
    with pytest.raises(ValueError, match="one control per seed"):
        paired_difference([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="p must be"):
        t_quantile(0.2, 3)
