"""Means over seeds with Student-t intervals, and paired comparisons against the baseline.

A method's number on the leaderboard is a mean over seeds with its 95% interval,
``mean ± t(0.975, n−1) · s / √n``; the comparison with the baseline is *paired*: the distilled and
the baseline student of one seed share the initialisation, data order and evaluation items, so
the per-seed differences are what is averaged and bounded. A difference whose interval excludes 0
is reported as separated from the baseline; with fewer than two seeds there is no interval, and
nothing is called separated.

The t quantile is computed here (no SciPy dependency): the Student-t CDF by Simpson's rule on its
density, inverted by bisection, accurate to about 1e-9 for the degrees of freedom a seed count
gives.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def _t_density(x: float, df: int) -> float:
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    return math.exp(log_norm - (df + 1) / 2 * math.log1p(x * x / df))


def t_cdf(x: float, df: int) -> float:
    """P(T ≤ x) for Student's t with ``df`` degrees of freedom."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be ≥ 1, got {df}")
    if x < 0:
        return 1.0 - t_cdf(-x, df)
    # The density is smooth and bounded: composite Simpson on [0, x] is accurate to ~1e-10 for
    # the quantiles a seed count asks for (|x| below ~13).
    panels = 2000
    h = x / panels
    total = _t_density(0.0, df) + _t_density(x, df)
    total += sum((4 if i % 2 else 2) * _t_density(i * h, df) for i in range(1, panels))
    return 0.5 + total * h / 3


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile of Student's t (``t_quantile(0.975, 4) ≈ 2.7764``)."""
    if not 0.5 <= p < 1:
        raise ValueError(f"p must be in [0.5, 1), got {p}")
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        high *= 2
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if t_cdf(middle, df) < p else (low, middle)
    return (low + high) / 2


@dataclass(frozen=True)
class Interval:
    """A mean over ``n`` values and its confidence interval (``None`` below two values)."""

    mean: float
    low: float | None
    high: float | None
    n: int

    @property
    def excludes_zero(self) -> bool:
        return self.low is not None and (self.low > 0 or self.high < 0)

    def as_dict(self) -> dict[str, float | int | None]:
        return {"mean": self.mean, "low": self.low, "high": self.high, "n": self.n}


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """``mean ± t((1 + confidence) / 2, n − 1) · s / √n`` of ``values``.

    Raises:
        ValueError: No values.
    """
    n = len(values)
    if n == 0:
        raise ValueError("no values to average")
    mean = sum(values) / n
    if n < 2:
        return Interval(mean, None, None, n)
    variance = sum((v - mean) ** 2 for v in values) / (n - 1)
    half = t_quantile((1 + confidence) / 2, n - 1) * math.sqrt(variance / n)
    return Interval(mean, mean - half, mean + half, n)


def paired_difference(treated: Sequence[float], control: Sequence[float], confidence: float = 0.95) -> Interval:
    """The interval of ``treated[i] − control[i]`` over seeds ``i`` (same seed, same everything else).

    Raises:
        ValueError: The two lists have different lengths.
    """
    if len(treated) != len(control):
        raise ValueError(f"paired values need one control per seed: {len(treated)} vs {len(control)}")
    return mean_interval([t - c for t, c in zip(treated, control, strict=True)], confidence)
