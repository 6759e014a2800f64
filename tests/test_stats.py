"""Statistics against published and independently computed values: Wilson, exact McNemar, AUROC bootstrap."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from torchmetrics.functional.classification import binary_auroc

from evaluation.stats import (
    auroc, bootstrap_auroc_ci, cohen_kappa, format_interval, format_rate, mcnemar_exact, paired_mcnemar, rate_record,
    wilson,
)


@pytest.mark.parametrize(
    "k, n, low, high",
    [
        # Newcombe (1998), Stat. Med. 17:857, Table I, method 3 (score interval without continuity correction)
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (1, 29, 0.0061, 0.1718),
        # the report's 16-prompt rows: 0/16, 2/16, 8/16, 16/16 (closed form, z = 1.959964)
        (0, 16, 0.0, 0.1936),
        (2, 16, 0.0350, 0.3602),
        (8, 16, 0.2800, 0.7200),
        (16, 16, 0.8064, 1.0),
    ],
)
def test_wilson_interval_matches_published_values(k, n, low, high):
    lo, hi = wilson(k, n)
    assert lo == pytest.approx(low, abs=5e-5) and hi == pytest.approx(high, abs=5e-5)


def test_wilson_closed_form_and_edges():
    z = 1.959963984540054
    for k, n in [(3, 7), (40, 259), (1, 805)]:
        p = k / n
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        assert wilson(k, n) == pytest.approx((centre - half, centre + half), abs=1e-12)
    assert wilson(0, 16)[0] == 0.0 and wilson(16, 16)[1] == 1.0
    # symmetric: k of n and n - k of n mirror each other
    lo, hi = wilson(3, 16)
    assert wilson(13, 16) == pytest.approx((1 - hi, 1 - lo))
    assert all(math.isnan(v) for v in wilson(0, 0))
    with pytest.raises(ValueError):
        wilson(5, 4)
    # 99%: wider than 95%
    assert wilson(8, 16, confidence=0.99)[0] < wilson(8, 16)[0]


def test_rate_record_and_markdown_format():
    record = rate_record(2, 16)
    assert record["rate"] == 0.125 and record["k"] == 2 and record["n"] == 16
    assert record["ci95"] == pytest.approx([0.0350, 0.3602], abs=5e-5)
    assert format_rate(record) == "12.5% (2/16) [3.5-36.0]"
    assert format_rate(rate_record(0, 16)) == "0.0% (0/16) [0.0-19.4]"
    assert format_rate(rate_record(16, 16)) == "100.0% (16/16) [80.6-100.0]"
    assert format_rate(None) == "—" and format_rate(rate_record(0, 0)) == "n/a"
    assert format_interval([float("nan"), float("nan")]) == "[n/a]"


def _mcnemar_by_enumeration(b: int, c: int) -> float:
    """Two-sided exact p by summing every outcome of Binomial(b + c, 1/2) at most as likely as the observed one."""
    n = b + c
    probability = [Fraction(math.comb(n, i), 2**n) for i in range(n + 1)]
    observed = probability[b]
    return float(min(Fraction(1), sum(p for p in probability if p <= observed)))


@pytest.mark.parametrize("b, c, p", [(0, 6, 0.03125), (6, 0, 0.03125), (1, 9, 22 / 1024), (0, 0, 1.0), (3, 3, 1.0),
                                     (0, 1, 1.0), (0, 5, 0.0625), (2, 10, 158 / 4096)])
def test_mcnemar_exact_known_values(b, c, p):
    assert mcnemar_exact(b, c) == pytest.approx(p, rel=1e-12)


def test_mcnemar_exact_equals_enumeration():
    for b in range(0, 15):
        for c in range(0, 15):
            assert mcnemar_exact(b, c) == pytest.approx(_mcnemar_by_enumeration(b, c), rel=1e-12, abs=1e-15)
    assert 0.0 <= mcnemar_exact(0, 2000) < 1e-300  # large n: exact integers, no overflow
    assert mcnemar_exact(1000, 1000) == 1.0


def test_paired_mcnemar_counts_discordant_units():
    method = {"0": False, "1": False, "2": True, "3": False, "4": False, "5": False, "6": False, "extra": True}
    baseline = {"0": True, "1": True, "2": True, "3": True, "4": True, "5": True, "6": True, "7": True}
    test = paired_mcnemar(method, baseline)
    assert (test["n"], test["b"], test["c"], test["both"]) == (7, 0, 6, 1)  # "extra" / "7": unpaired, left out
    assert test["p"] == pytest.approx(0.03125)
    assert test["first_rate"] == pytest.approx(1 / 7) and test["second_rate"] == 1.0
    assert test["difference"] == pytest.approx(-6 / 7)


def test_auroc_matches_torchmetrics_with_ties():
    rng = np.random.default_rng(0)
    scores = np.round(rng.random(300), 1)  # many ties
    labels = (scores + rng.normal(0, 0.3, 300) > 0.5).astype(int)
    expected = float(binary_auroc(torch.tensor(scores, dtype=torch.float64), torch.tensor(labels)))
    assert auroc(scores, labels) == pytest.approx(expected, abs=1e-6)  # torchmetrics sums in float32
    assert auroc([0.9, 0.8, 0.1], [1, 1, 0]) == 1.0 and auroc([0.5, 0.5], [1, 0]) == 0.5
    assert math.isnan(auroc([0.1, 0.2], [1, 1]))


def test_bootstrap_auroc_interval_matches_hanley_mcneil():
    """For 200 + 200 normal scores, the bootstrap interval is close to the Hanley & McNeil (1982) normal interval."""
    rng = np.random.default_rng(1)
    scores = np.concatenate([rng.normal(1, 1, 200), rng.normal(0, 1, 200)])
    labels = [1] * 200 + [0] * 200
    a = auroc(scores, labels)
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    se = math.sqrt((a * (1 - a) + 199 * (q1 - a * a) + 199 * (q2 - a * a)) / (200 * 200))
    low, high = bootstrap_auroc_ci(scores, labels, resamples=2000, seed=0)
    assert low < a < high
    assert low == pytest.approx(a - 1.959964 * se, abs=0.01)
    assert high == pytest.approx(a + 1.959964 * se, abs=0.01)
    assert bootstrap_auroc_ci(scores, labels, resamples=2000, seed=0) == (low, high)  # seeded


def test_bootstrap_auroc_edges():
    assert bootstrap_auroc_ci([0.9, 0.8, 0.2, 0.1], [1, 1, 0, 0], resamples=200) == (1.0, 1.0)  # perfectly separated
    assert all(math.isnan(v) for v in bootstrap_auroc_ci([0.9, 0.8], [1, 1]))
    wide = bootstrap_auroc_ci(np.r_[np.arange(8) / 8, np.arange(8) / 8 + 0.3], [1] * 8 + [0] * 8, resamples=500)
    assert wide[1] - wide[0] > 0.2  # 16 scores: a wide interval


def test_cohen_kappa():
    # Hand computation: observed 0.82, expected 0.57 * 0.43 + 0.43 * 0.57 = 0.4902
    assert cohen_kappa(41, 16, 2, 41) == pytest.approx((0.82 - 0.4902) / (1 - 0.4902))
    assert cohen_kappa(10, 0, 0, 10) == 1.0
    assert math.isnan(cohen_kappa(0, 0, 0, 0))
