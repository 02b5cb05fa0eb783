"""The benchmark's statistics, by hand."""

from __future__ import annotations

import math

import pytest

from benchmarks import measure


def test_spearman_by_hand() -> None:
    assert measure.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert measure.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # d = (0, 0, 1, -1): 1 - 6*2 / (4*15) = 0.8
    assert measure.spearman([1, 2, 3, 4], [1, 2, 4, 3]) == pytest.approx(0.8)
    # Ties share their mean rank.
    assert measure.ranks([5.0, 1.0, 5.0, 2.0]) == [3.5, 1.0, 3.5, 2.0]
    assert measure.spearman([1], [1]) is None
    assert measure.spearman([1, 2, 3], [7, 7, 7]) is None
    value = measure.spearman([1, 2, 3, 4, 5], [2, 1, 5, 3, 4])
    assert value is not None and -1 <= value <= 1 and not math.isnan(value)


def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert measure.percentile(values, 50) == 50.0
    assert measure.percentile(values, 99) == 99.0
    assert measure.percentile(values, 100) == 100.0
    assert measure.percentile([3.0], 99) == 3.0
