"""Statistics and table cells shared by the report's sections.  Pure: no I/O.

Every figure is summarised as min / median / max over the repetitions (:func:`three`), and every ratio is
formed within one repetition first (:func:`paired`), so a slow drift in the machine's load moves both sides of
a ratio together instead of widening it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["median", "percentile", "three", "paired", "by_rep", "med", "cell", "table", "mean_interval"]


def median(values: Sequence[float]) -> float:
    """The median; NaN for no values."""
    s = sorted(values)
    if not s:
        return math.nan
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not 0 <= q <= 100:
        raise ValueError(f"q: expected 0..100, got {q!r}")
    s = sorted(values)
    if not s:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(s)))
    return s[rank - 1]


def _finite(values: Iterable[float | None]) -> list[float]:
    """The values that are numbers and finite (None, NaN and infinities left out), as floats."""
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def three(values: Iterable[float | None]) -> dict[str, float] | None:
    """min / median / max / n of the finite values, or None when there are none."""
    vals = _finite(values)
    if not vals:
        return None
    return {"min": min(vals), "median": median(vals), "max": max(vals), "n": len(vals)}


# Student's t, two-sided 95 % (0.975 quantile), by degrees of freedom; beyond the table the normal's 1.96
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def mean_interval(values: Iterable[float | None]) -> dict[str, float] | None:
    """Mean, sample sd, n and the 95 % confidence interval of the mean (Student's t) of the finite values; None
    for fewer than two.  For figures whose single runs scatter more than the difference being looked for."""
    vals = _finite(values)
    n = len(vals)
    if n < 2:
        return None
    mean = sum(vals) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1))
    half = (_T975[n - 2] if n - 1 <= len(_T975) else 1.96) * sd / math.sqrt(n)
    return {"mean": mean, "sd": sd, "n": n, "lo": mean - half, "hi": mean + half}


def paired(num: dict[int, float], den: dict[int, float], op: str = "/") -> list[float]:
    """Per repetition present on both sides: num / den (or num - den); a zero denominator is skipped."""
    if op not in ("/", "-"):
        raise ValueError(f"op: expected '/' or '-', got {op!r}")
    out = []
    for rep in sorted(set(num) & set(den)):
        if op == "-":
            out.append(num[rep] - den[rep])
        elif den[rep]:
            out.append(num[rep] / den[rep])
    return out


def by_rep(records: Iterable[dict[str, Any]], value: str, **match: Any) -> dict[int, float]:
    """{repetition: record[value]} of the records whose fields equal `match` (and that have the value)."""
    return {r["rep"]: r[value] for r in records
            if all(r.get(k) == v for k, v in match.items()) and r.get(value) is not None}


def med(x: dict[str, float] | None) -> float | None:
    """The median of a :func:`three` summary (None stays None)."""
    return None if x is None else x["median"]


def cell(x: dict[str, float] | None, fmt: str = "{:.3f}", scale: float = 1.0) -> str:
    """A table cell: 'median (min-max)' of a :func:`three` summary, the median alone for one value, or 'n/a'."""
    if x is None:
        return "n/a"
    mid, lo, hi = (fmt.format(x[k] * scale) for k in ("median", "min", "max"))
    return mid if x["n"] == 1 else f"{mid} ({lo}–{hi})"


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """A markdown table's lines."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines
