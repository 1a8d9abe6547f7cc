"""tc(8) unit parsing and formatting (imqd.units)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imqd.units import (
    MAX_RATE,
    RATE_UNITS,
    SIZE_UNITS,
    format_rate,
    format_size,
    parse_rate,
    parse_size,
    parse_time,
)


@pytest.mark.parametrize(
    ("text", "bps"),
    [
        (8000, 8000),
        ("8000", 8000),
        ("123bit", 123),
        ("100kbit", 100_000),
        ("7mbit", 7_000_000),
        ("7Mbit", 7_000_000),
        ("1.5mbit", 1_500_000),
        ("2gbit", 2_000_000_000),
        ("1tbit", 10**12),
        ("1kibit", 1024),
        ("3mibit", 3 * 2**20),
        ("1gibit", 2**30),
        ("1tibit", 2**40),
        ("1bps", 8),
        ("10kbps", 80_000),
        ("12MBps", 96_000_000),
        ("1gbps", 8 * 10**9),
        ("1tbps", 8 * 10**12),
        ("1kibps", 8192),
        ("1MiBps", 8 * 2**20),
        ("1gibps", 8 * 2**30),
        ("1tibps", 8 * 2**40),
        (" 10 mbit ", 10_000_000),
        (".5kbit", 500),
        (1000.0, 1000),
    ],
)
def test_parse_rate_units(text: str | int | float, bps: int) -> None:
    assert parse_rate(text) == bps


@pytest.mark.parametrize(
    "bad",
    ["", "mbit", "-1mbit", "-5", "0", "0bit", "0.1bit", "10 zbit", "10mbits", "1e6", "10m", "ten", "1.2.3mbit",
     True, False, None, [1], -1, 0, float("nan"), float("inf"), -2.0, str(MAX_RATE + 1)],
)  # fmt: skip
def test_parse_rate_rejects(bad: object) -> None:
    with pytest.raises(ValueError) as ei:
        parse_rate(bad)  # type: ignore[arg-type]
    assert repr(bad) in str(ei.value)


def test_every_rate_unit_is_case_insensitive() -> None:
    for unit, scale in RATE_UNITS.items():
        assert parse_rate(f"3{unit.upper()}") == parse_rate(f"3{unit}") == 3 * scale


@pytest.mark.parametrize(
    ("text", "nbytes"),
    [(1514, 1514), ("1514", 1514), ("1514b", 1514), ("16k", 16384), ("16KB", 16384), ("2m", 2 * 2**20),
     ("1mb", 2**20), ("1g", 2**30), ("1gb", 2**30), ("8kbit", 1024), ("1mbit", 2**20 // 8), ("1gbit", 2**30 // 8),
     ("1.5k", 1536), (0, 0), ("0b", 0)],
)  # fmt: skip
def test_parse_size(text: str | int, nbytes: int) -> None:
    assert parse_size(text) == nbytes


@pytest.mark.parametrize("bad", ["", "k", "-1", "-1k", "10kib", "10 bytes", "1t", True, None, -3, float("nan")])
def test_parse_size_rejects(bad: object) -> None:
    with pytest.raises(ValueError) as ei:
        parse_size(bad)  # type: ignore[arg-type]
    assert repr(bad) in str(ei.value)


def test_size_units_follow_tc() -> None:
    # tc's get_size: k/kb, m/mb, g/gb are KiB/MiB/GiB; kbit/mbit/gbit are those /8
    assert SIZE_UNITS["kbit"] * 8 == SIZE_UNITS["k"]
    for unit, scale in SIZE_UNITS.items():
        assert parse_size(f"3{unit.upper()}") == 3 * scale


@pytest.mark.parametrize(
    ("text", "secs"),
    [("1s", 1.0), ("2sec", 2.0), ("3secs", 3.0), ("4ms", 0.004), ("5msec", 0.005), ("250us", 0.00025),
     ("7usec", 7e-6), ("1.5s", 1.5), (0.1, 0.1), ("0.1", 0.1), (2, 2.0), (0, 0.0)],
)  # fmt: skip
def test_parse_time(text: str | float, secs: float) -> None:
    assert math.isclose(parse_time(text), secs, rel_tol=1e-12)


@pytest.mark.parametrize("bad", ["", "1h", "-1s", "1 fortnight", True, None, -0.5, float("inf"), float("nan")])
def test_parse_time_rejects(bad: object) -> None:
    with pytest.raises(ValueError) as ei:
        parse_time(bad)  # type: ignore[arg-type]
    assert repr(bad) in str(ei.value)


@pytest.mark.parametrize(
    ("bps", "text"),
    [(7_000_000, "7mbit"), (1_500_000, "1500kbit"), (123, "123bit"), (10**9, "1gbit"), (3 * 10**12, "3tbit"),
     (2048, "2kibit"), (3 * 2**20, "3mibit"), (1000, "1kbit"), (1024000, "1024kbit"), (1, "1bit")],
)  # fmt: skip
def test_format_rate(bps: int, text: str) -> None:
    assert format_rate(bps) == text


@pytest.mark.parametrize(("n", "text"), [(1514, "1514b"), (16384, "16k"), (2**20, "1m"), (3 * 2**30, "3g"), (0, "0b")])
def test_format_size(n: int, text: str) -> None:
    assert format_size(n) == text


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "1mbit"])
def test_format_rate_rejects(bad: object) -> None:
    with pytest.raises(ValueError):
        format_rate(bad)  # type: ignore[arg-type]


@given(st.integers(min_value=1, max_value=MAX_RATE))
def test_rate_round_trip(bps: int) -> None:
    text = format_rate(bps)
    assert parse_rate(text) == bps
    assert format_rate(parse_rate(text.upper())) == text


@given(st.integers(min_value=1, max_value=10**6), st.sampled_from(sorted(RATE_UNITS)))
def test_rate_canonical_form_is_stable(n: int, unit: str) -> None:
    bps = parse_rate(f"{n}{unit}")
    assert bps == n * RATE_UNITS[unit]
    assert parse_rate(format_rate(bps)) == bps


@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_size_round_trip(n: int) -> None:
    assert parse_size(format_size(n)) == n
