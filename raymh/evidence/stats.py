"""Seed statistics of the evidence tables: mean +- sample std, and paired differences with a 95% t-interval.

Runs of two settings with the same seed share the labeled subset, the initial weights and the augmentation
seed, so their difference is paired: the interval is over the per-seed differences (a paired t-interval),
not over the two settings' spreads.

Each difference also gets the two-sided p-value of the paired t-test (t = mean / (sd / sqrt(n)), n - 1
degrees of freedom), from Student's t distribution computed here (the regularized incomplete beta function,
no scipy at run time), and a table's differences are one family whose p-values are Holm-adjusted (`holm`).
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
    p: float = math.nan  # two-sided p-value of the paired t-test (differences of at least 2 seeds)


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
    return Summary(base.mean, base.std, base.n, base.mean - half, base.mean + half, paired_t_p(base.mean, base.std, base.n))


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz's method, as in Numerical Recipes'
    betacf); converges quickly for x < (a + 1) / (a + b + 2)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            return h
    raise ArithmeticError(f"incomplete beta continued fraction did not converge (a={a}, b={b}, x={x})")


def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b), a, b > 0, 0 <= x <= 1."""
    if not (a > 0 and b > 0):
        raise ValueError(f"betainc needs a, b > 0, got a={a}, b={b}")
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_continued_fraction(a, b, x) / a
    return 1.0 - front * _beta_continued_fraction(b, a, 1.0 - x) / b


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with df degrees of freedom: I_{df / (df + t^2)}(df / 2, 1 / 2)."""
    if df <= 0:
        raise ValueError(f"a t-test needs at least 1 degree of freedom, got df={df}")
    if math.isnan(t):
        return math.nan
    if math.isinf(t):
        return 0.0
    return betainc(df / 2.0, 0.5, df / (df + t * t))


def paired_t_p(mean: float, std: float, n: int) -> float:
    """Two-sided p-value of a paired t-test of n per-seed differences (NaN below 2 seeds). Differences that all
    agree (std 0) give p = 0, or 1 when they are all 0."""
    if n < 2 or not (math.isfinite(mean) and math.isfinite(std)):
        return math.nan
    if std == 0:
        return 1.0 if mean == 0 else 0.0
    return t_two_sided_p(mean / (std / math.sqrt(n)), n - 1)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of one family of p-values (NaN entries are not in the family and stay NaN):
    with the m p-values sorted ascending, adjusted p_(i) = max over j <= i of min(1, (m - j + 1) p_(j))."""
    idx = sorted((i for i, p in enumerate(pvalues) if not math.isnan(p)), key=lambda i: pvalues[i])
    m = len(idx)
    out = [math.nan] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(idx):  # rank = j - 1
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        out[i] = running
    return out
