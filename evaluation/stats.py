"""Statistics for the safety report: intervals for rates, paired tests, bootstrap intervals.

- `wilson(k, n)`: the Wilson score interval of a binomial proportion (95% by default); unlike
  the normal ("Wald") interval it stays inside [0, 1] and is not degenerate at 0/n or n/n.
- `mcnemar_exact(b, c)`: the exact (binomial) McNemar test of two paired binary outcomes from
  their discordant counts; `paired_mcnemar(x, y)` counts them from two per-unit outcome maps.
- `auroc(scores, labels)` (Mann-Whitney, ties count one half) and `bootstrap_auroc_ci`: a
  stratified percentile bootstrap (positives and negatives resampled separately, seeded).
- `rate_record(k, n)`: the `{"rate", "k", "n", "ci95"}` record of every rate in the report.

Pure Python + numpy: no scipy needed.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any, Mapping, Sequence

import numpy as np

Z95 = NormalDist().inv_cdf(0.975)  # 1.959963984540054


def z_value(confidence: float = 0.95) -> float:
    return Z95 if confidence == 0.95 else NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson(k: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for `k` successes of `n` (NaNs when n = 0)."""
    if n <= 0:
        return (float("nan"), float("nan"))
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    z = z_value(confidence)
    p = k / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    # exact ends at 0/n and n/n (rounding would otherwise give 1e-17 instead of 0)
    low = 0.0 if k == 0 else max(0.0, centre - half)
    high = 1.0 if k == n else min(1.0, centre + half)
    return (low, high)


def rate_record(k: float, n: int, confidence: float = 0.95) -> dict[str, Any]:
    """`{"rate": k / n, "k": k, "n": n, "ci95": [low, high]}` (rate and interval NaN when n = 0)."""
    k_out: float = int(k) if float(k).is_integer() else k
    return {"rate": k / n if n else float("nan"), "k": k_out, "n": n, "ci95": list(wilson(k, n, confidence))}


def binomial_cdf_half(k: int, n: int) -> float:
    """P(X <= k) for X ~ Binomial(n, 1/2), exact (integer arithmetic)."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    return sum(math.comb(n, i) for i in range(k + 1)) / (1 << n)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts `b` (only the first outcome
    holds) and `c` (only the second): 2 * P(X <= min(b, c)), X ~ Binomial(b + c, 1/2), capped at 1.
    No discordant pair: p = 1."""
    if b < 0 or c < 0:
        raise ValueError("discordant counts must be non-negative")
    n = b + c
    if n == 0:
        return 1.0
    return min(1.0, 2.0 * binomial_cdf_half(min(b, c), n))


def paired_mcnemar(first: Mapping[Any, bool], second: Mapping[Any, bool]) -> dict[str, Any]:
    """Exact McNemar test of two outcome maps (unit -> outcome) on the units both have.

    `b`: units where only `first` is true, `c`: only `second`; also the two rates on the paired
    units and their difference (first - second).
    """
    units = [u for u in first if u in second]
    x = [bool(first[u]) for u in units]
    y = [bool(second[u]) for u in units]
    b = sum(a and not o for a, o in zip(x, y))
    c = sum(o and not a for a, o in zip(x, y))
    n = len(units)
    return {
        "n": n, "b": b, "c": c, "both": sum(a and o for a, o in zip(x, y)),
        "first_rate": sum(x) / n if n else float("nan"), "second_rate": sum(y) / n if n else float("nan"),
        "difference": (b - c) / n if n else float("nan"), "p": mcnemar_exact(b, c),
    }


# --------------------------------------------------------------------------- AUROC


def auroc(scores: Sequence[float], labels: Sequence[int]) -> float:
    """Area under the ROC curve (Mann-Whitney U / (n_pos * n_neg); ties count one half);
    NaN when one class is missing."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    return _auroc(s[y], s[~y])


def _auroc(positive: np.ndarray, negative: np.ndarray) -> float:
    if positive.size == 0 or negative.size == 0:
        return float("nan")
    ranks = _average_ranks(np.concatenate([positive, negative]))
    u = ranks[: positive.size].sum() - positive.size * (positive.size + 1) / 2
    return float(u / (positive.size * negative.size))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties get their average rank."""
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    ranks = np.empty(values.size, dtype=np.float64)
    boundaries = np.flatnonzero(np.diff(ordered)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [values.size]])
    for start, end in zip(starts, ends):
        ranks[order[start:end]] = (start + 1 + end) / 2
    return ranks


def bootstrap_auroc_ci(
    scores: Sequence[float], labels: Sequence[int], resamples: int = 2000, confidence: float = 0.95, seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the AUROC: positives and negatives are resampled with
    replacement separately (their counts stay fixed), `resamples` times with a seeded generator.
    NaNs when one class is missing."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    positive, negative = s[y], s[~y]
    if positive.size == 0 or negative.size == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    values = np.empty(resamples, dtype=np.float64)
    for i in range(resamples):
        values[i] = _auroc(rng.choice(positive, positive.size), rng.choice(negative, negative.size))
    alpha = (1 - confidence) / 2
    low, high = np.quantile(values, [alpha, 1 - alpha])
    return (float(low), float(high))


# --------------------------------------------------------------------------- agreement


def cohen_kappa(true_positive: int, false_positive: int, false_negative: int, true_negative: int) -> float:
    """Cohen's kappa of a judge vs reference labels from the 2x2 table (NaN when undefined)."""
    n = true_positive + false_positive + false_negative + true_negative
    if n == 0:
        return float("nan")
    observed = (true_positive + true_negative) / n
    judge_yes, reference_yes = (true_positive + false_positive) / n, (true_positive + false_negative) / n
    expected = judge_yes * reference_yes + (1 - judge_yes) * (1 - reference_yes)
    return float("nan") if expected == 1 else (observed - expected) / (1 - expected)


def format_interval(interval: Sequence[float] | None, scale: float = 100.0, digits: int = 1) -> str:
    """`[3.5-36.0]` (percent by default); `[n/a]` for NaN ends."""
    if not interval or any(v is None or (isinstance(v, float) and math.isnan(v)) for v in interval):
        return "[n/a]"
    return f"[{scale * interval[0]:.{digits}f}-{scale * interval[1]:.{digits}f}]"


def format_p(value: float) -> str:
    """A p-value for a table: `6e-07` below 0.001, else `0.125`."""
    return f"{value:.2g}" if value < 0.001 else f"{value:.3f}"


def format_rate(record: Mapping[str, Any] | None) -> str:
    """`12.5% (2/16) [3.5-36.0]` for a `rate_record`; `—` for None; `n/a` for n = 0."""
    if record is None:
        return "—"
    n = int(record["n"])
    if not n:
        return "n/a"
    k = record["k"]
    count = f"{k:g}" if float(k).is_integer() else f"{k:.2f}"
    return f"{100 * k / n:.1f}% ({count}/{n}) {format_interval(record.get('ci95'))}"
