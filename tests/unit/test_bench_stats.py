"""bench.stats.mean_interval: the confidence interval the latency-under-load figure is read with."""

from __future__ import annotations

import math
import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.stats import mean_interval


def test_interval_of_known_values_uses_students_t() -> None:
    vals = [0.999, 1.065, 1.062, 0.973, 1.031, 1.005, 1.039, 0.986, 0.994, 1.094]
    got = mean_interval(vals)
    assert got is not None and got["n"] == 10
    assert got["mean"] == pytest.approx(statistics.mean(vals)) and got["sd"] == pytest.approx(statistics.stdev(vals))
    half = 2.262 * statistics.stdev(vals) / math.sqrt(10)  # t(0.975, 9 degrees of freedom)
    assert (got["lo"], got["hi"]) == (pytest.approx(got["mean"] - half), pytest.approx(got["mean"] + half))


def test_two_values_use_the_widest_t_and_many_the_normal() -> None:
    two = mean_interval([1.0, 2.0])
    assert two is not None and two["hi"] - two["mean"] == pytest.approx(12.706 * math.sqrt(0.5) / math.sqrt(2))
    many = mean_interval([float(i % 2) for i in range(100)])
    assert many is not None and many["hi"] - many["mean"] == pytest.approx(1.96 * many["sd"] / 10)


def test_fewer_than_two_finite_values_give_none() -> None:
    assert mean_interval([]) is None and mean_interval([1.0]) is None
    assert mean_interval([1.0, None, math.nan]) is None  # type: ignore[list-item]


@given(st.lists(st.floats(min_value=0.5, max_value=2.0), min_size=2, max_size=40))
def test_the_interval_holds_the_mean_and_narrows_to_it_only_without_scatter(vals: list[float]) -> None:
    got = mean_interval(vals)
    assert got is not None
    assert got["lo"] <= got["mean"] <= got["hi"]
    assert (got["hi"] - got["lo"] > 0) == (got["sd"] > 0)
