"""tc(8) units for rates, sizes and times, so configs read like ``tc`` command lines.

Rates (``parse_rate`` -> int bit/s), as tc's ``get_rate``:

====================  =========================================
bare number           bit/s
bit                   bit/s
kbit mbit gbit tbit   SI multiples of bit/s (1000)
kibit mibit gibit     binary multiples of bit/s (1024)
tibit
bps                   BYTES per second (x8)
kbps mbps gbps tbps   SI multiples of bytes/s
kibps mibps gibps     binary multiples of bytes/s
tibps
====================  =========================================

Sizes (``parse_size`` -> int bytes), as tc's ``get_size``: bare number or ``b`` =
bytes; ``k``/``kb``, ``m``/``mb``, ``g``/``gb`` = 1024-multiples of bytes (tc's
"kilobytes" are KiB); ``kbit``/``mbit``/``gbit`` = 1024-multiples of *bits*, /8.

Times (``parse_time`` -> float seconds): ``s``/``sec``/``secs``, ``ms``/``msec``/
``msecs``, ``us``/``usec``/``usecs``.  Unlike tc, a bare number means SECONDS
(tc reads it as microseconds): a config value ``interval: 0.1`` should not
silently mean 100 ns.

Suffixes are case-insensitive, optional blanks between number and suffix are
allowed, fractions are accepted ("1.5mbit") and rounded to the nearest whole
bit/s or byte (tc truncates).  ``bool`` is refused everywhere (YAML turns
``yes`` into ``True``, which Python would otherwise treat as 1).
"""

from __future__ import annotations

import math
import re
from decimal import ROUND_HALF_EVEN, Decimal

__all__ = [
    "RATE_UNITS",
    "SIZE_UNITS",
    "TIME_UNITS",
    "MAX_RATE",
    "parse_rate",
    "parse_size",
    "parse_time",
    "format_rate",
    "format_size",
]

RATE_UNITS: dict[str, int] = {
    "bit": 1,
    "kbit": 10**3,
    "mbit": 10**6,
    "gbit": 10**9,
    "tbit": 10**12,
    "kibit": 2**10,
    "mibit": 2**20,
    "gibit": 2**30,
    "tibit": 2**40,
    "bps": 8,
    "kbps": 8 * 10**3,
    "mbps": 8 * 10**6,
    "gbps": 8 * 10**9,
    "tbps": 8 * 10**12,
    "kibps": 8 * 2**10,
    "mibps": 8 * 2**20,
    "gibps": 8 * 2**30,
    "tibps": 8 * 2**40,
}

SIZE_UNITS: dict[str, int] = {
    "b": 1,
    "k": 2**10,
    "kb": 2**10,
    "m": 2**20,
    "mb": 2**20,
    "g": 2**30,
    "gb": 2**30,
    "kbit": 2**10 // 8,
    "mbit": 2**20 // 8,
    "gbit": 2**30 // 8,
}

TIME_UNITS: dict[str, Decimal] = {
    "s": Decimal(1),
    "sec": Decimal(1),
    "secs": Decimal(1),
    "ms": Decimal("0.001"),
    "msec": Decimal("0.001"),
    "msecs": Decimal("0.001"),
    "us": Decimal("0.000001"),
    "usec": Decimal("0.000001"),
    "usecs": Decimal("0.000001"),
}

MAX_RATE = 2**64 - 1  # tc/netlink carry rates as u64 bytes/s; refuse anything beyond
MAX_SIZE = 2**32 - 1  # tc sizes are u32

# A decimal number (no sign, no exponent) then an optional alphabetic suffix.
_NUM_UNIT = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)\s*")

# Output units for format_rate: SI first (what operators write), binary as fallback.
_SI_OUT = (("tbit", 10**12), ("gbit", 10**9), ("mbit", 10**6), ("kbit", 10**3))
_BIN_OUT = (("tibit", 2**40), ("gibit", 2**30), ("mibit", 2**20), ("kibit", 2**10))
_SIZE_OUT = (("g", 2**30), ("m", 2**20), ("k", 2**10))


def _split(v: str, what: str) -> tuple[Decimal, str]:
    """Split ``"1.5mbit"`` into ``(Decimal("1.5"), "mbit")`` or raise ValueError naming ``v``."""
    s = v.strip()
    if s.startswith("-"):
        raise ValueError(f"invalid {what} {v!r}: must not be negative")
    m = _NUM_UNIT.fullmatch(s)
    if m is None:
        raise ValueError(f"invalid {what} {v!r}: expected a number with an optional unit, like tc")
    return Decimal(m.group(1)), m.group(2).lower()


def _check_type(v: object, what: str) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise ValueError(f"invalid {what} {v!r}: expected a number or a string like tc's")


def _whole(x: Decimal) -> int:
    return int(x.to_integral_value(rounding=ROUND_HALF_EVEN))


def _parse_scaled(v: str | int | float, what: str, units: dict[str, int], default_unit: str) -> int:
    """A non-negative whole number from a tc-style ``"<number><unit>"`` string, int or float."""
    _check_type(v, what)
    if isinstance(v, str):
        num, unit = _split(v, what)
        scale = units.get(unit or default_unit)
        if scale is None:
            raise ValueError(f"invalid {what} {v!r}: unknown unit {unit!r} (use one of {', '.join(units)})")
        return _whole(num * scale)
    if isinstance(v, float) and not math.isfinite(v):
        raise ValueError(f"invalid {what} {v!r}: must be finite")
    if v < 0:
        raise ValueError(f"invalid {what} {v!r}: must not be negative")
    return _whole(Decimal(v)) if isinstance(v, float) else v


def parse_rate(v: str | int | float) -> int:
    """Parse a tc rate (``"100mbit"``, ``"1.5MBps"``, ``8000``) into bit/s (int >= 1)."""
    bps = _parse_scaled(v, "rate", RATE_UNITS, "bit")
    if bps <= 0:
        raise ValueError(f"invalid rate {v!r}: must be at least 1bit")
    if bps > MAX_RATE:
        raise ValueError(f"invalid rate {v!r}: exceeds the 64-bit limit")
    return bps


def parse_size(v: str | int | float) -> int:
    """Parse a tc size (``"1514"``, ``"15k"``, ``"1mb"``, ``"8kbit"``) into bytes (int >= 0)."""
    n = _parse_scaled(v, "size", SIZE_UNITS, "b")
    if n > MAX_SIZE:
        raise ValueError(f"invalid size {v!r}: exceeds the 32-bit limit")
    return n


def parse_time(v: str | int | float) -> float:
    """Parse a time (``"4ms"``, ``"250us"``, ``0.1``) into seconds; a bare number is seconds."""
    _check_type(v, "time")
    if isinstance(v, str):
        num, unit = _split(v, "time")
        scale = TIME_UNITS.get(unit or "s")
        if scale is None:
            raise ValueError(f"invalid time {v!r}: unknown unit {unit!r} (use one of {', '.join(TIME_UNITS)})")
        return float(num * scale)
    t = float(v)
    if not math.isfinite(t):
        raise ValueError(f"invalid time {v!r}: must be finite")
    if t < 0:
        raise ValueError(f"invalid time {v!r}: must not be negative")
    return t


def format_rate(bps: int) -> str:
    """Exact canonical tc form of a rate: largest SI unit that divides it, else binary, else bit.

    ``7_000_000 -> "7mbit"``, ``1_500_000 -> "1500kbit"``, ``2048 -> "2kibit"``, ``123 -> "123bit"``;
    ``parse_rate(format_rate(x)) == x`` for every valid ``x``.
    """
    if isinstance(bps, bool) or not isinstance(bps, int) or bps <= 0:
        raise ValueError(f"invalid rate {bps!r}: expected a positive int of bit/s")
    for units in (_SI_OUT, _BIN_OUT):
        for name, scale in units:
            if bps % scale == 0:
                return f"{bps // scale}{name}"
    return f"{bps}bit"


def format_size(nbytes: int) -> str:
    """Exact canonical tc form of a size: ``1514 -> "1514b"``, ``16384 -> "16k"``, ``2**20 -> "1m"``."""
    if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 0:
        raise ValueError(f"invalid size {nbytes!r}: expected a non-negative int of bytes")
    if nbytes:
        for name, scale in _SIZE_OUT:
            if nbytes % scale == 0:
                return f"{nbytes // scale}{name}"
    return f"{nbytes}b"
