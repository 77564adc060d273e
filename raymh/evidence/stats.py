"""Seed statistics of the evidence tables: mean +- sample std, and paired differences with a 95% t-interval.

Runs of two settings with the same seed share the labeled subset, the initial weights and the augmentation
seed, so their difference is paired: the interval is over the per-seed differences (a paired t-interval),
not over the two settings' spreads.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

# Two-sided 95% quantiles of Student's t, t_{0.975, df}, df = 1..30 (standard table values).
_T975 = (
    12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912, 2.364624, 2.306004, 2.262157, 2.228139,
    2.200985, 2.178813, 2.160369, 2.144787, 2.131450, 2.119905, 2.109816, 2.100922, 2.093024, 2.085963,
    2.079614, 2.073873, 2.068658, 2.063899, 2.059539, 2.055529, 2.051831, 2.048407, 2.045230, 2.042272,
)  # fmt: skip


def t_quantile_975(df: int) -> float:
    """t_{0.975, df}; beyond 30 degrees of freedom, the Cornish-Fisher expansion around 1.95996 (error < 1e-4)."""
    if df < 1:
        raise ValueError(f"a t-interval needs at least 1 degree of freedom (2 seeds), got df={df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


@dataclass(frozen=True)
class Summary:
    """mean, sample std (NaN for one value), n; and for differences the 95% t-interval [low, high]."""

    mean: float
    std: float
    n: int
    low: float = math.nan
    high: float = math.nan


def summarize(values: Sequence[float]) -> Summary:
    """Mean and sample standard deviation (ddof 1) of finite values."""
    xs = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not xs:
        return Summary(math.nan, math.nan, 0)
    mean = sum(xs) / len(xs)
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else math.nan
    return Summary(mean, std, len(xs))


def paired_difference(treated: dict[int, float], control: dict[int, float]) -> Summary:
    """treated - control over the seeds both have: mean, std and the 95% t-interval of the mean difference."""
    seeds = sorted(s for s in set(treated) & set(control) if math.isfinite(treated[s]) and math.isfinite(control[s]))
    diffs = [treated[s] - control[s] for s in seeds]
    base = summarize(diffs)
    if base.n < 2:
        return base
    half = t_quantile_975(base.n - 1) * base.std / math.sqrt(base.n)
    return Summary(base.mean, base.std, base.n, base.mean - half, base.mean + half)
