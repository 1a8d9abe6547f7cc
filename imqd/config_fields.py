"""What an operator may write for each config field, and the int or tuple it is stored as.

Values are accepted the way an operator writes them (tc rates and sizes,
"tcp", "5000-5100", "ef", "0x10/0xff") and stored normalised so the data
plane never parses strings.  Each parser raises ``ValueError`` with a message
naming the bad value; pydantic attaches the field it came from.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator
from typing import Annotated, Any

from pydantic import BeforeValidator

from imqd.cidr import normal_cidr
from imqd.units import parse_rate, parse_size, parse_time

U32 = 0xFFFFFFFF
MAX_MATCH_ADDRESSES = 1024  # addresses (CIDRs) one class may list in src or dst

PROTOCOLS: dict[str, int] = {
    "icmp": 1,
    "tcp": 6,
    "udp": 17,
    "dccp": 33,
    "gre": 47,
    "esp": 50,
    "ah": 51,
    "icmpv6": 58,
    "ipv6-icmp": 58,
    "sctp": 132,
    "udplite": 136,
}
PROTO_NAMES = {v: k for k, v in reversed(PROTOCOLS.items())}  # first name wins: icmpv6, not ipv6-icmp

DSCP_NAMES: dict[str, int] = {
    **{f"cs{i}": i * 8 for i in range(8)},
    **{f"af{c}{d}": c * 8 + d * 2 for c in range(1, 5) for d in range(1, 4)},
    "ef": 46,
    "va": 44,  # RFC 5865 voice-admit
    "le": 1,  # RFC 8622 lower effort
}


def no_bool(v: Any, what: str) -> None:
    if isinstance(v, bool):
        raise ValueError(f"invalid {what} {v!r}")


def parse_cidr(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return str(v)
    if not isinstance(v, str):
        raise ValueError(f"invalid CIDR {v!r}: expected a string like '198.18.1.0/24' or '2001:db8::/32'")
    try:
        # strict=False: host bits are masked off, as iptables does with -s 10.0.0.1/8
        return normal_cidr(v.strip())
    except ValueError as e:
        raise ValueError(f"invalid CIDR {v!r}: {e}") from None


def _name_or_number(v: Any, what: str, names: dict[str, int], top: int, hint: str, base: int) -> int | None:
    """A protocol or DSCP: one of ``names`` (any case), or a number 0..``top`` (text in ``base``; 0: any)."""
    if v is None:
        return None
    no_bool(v, what)
    if isinstance(v, str):
        s = v.strip().lower()
        if s in names:
            return names[s]
        if base == 10 and not s.isdigit():
            raise ValueError(f"invalid {what} {v!r}: {hint}")
        try:
            v = int(s, base)
        except ValueError:
            raise ValueError(f"invalid {what} {v!r}: {hint}") from None
    if not isinstance(v, int) or not 0 <= v <= top:
        raise ValueError(f"invalid {what} {v!r}: {hint}")
    return v


def parse_proto(v: Any) -> int | None:
    return _name_or_number(v, "protocol", PROTOCOLS, 255, f"use one of {', '.join(PROTOCOLS)} or 0..255", 10)


def _port(v: Any, orig: Any) -> int:
    if isinstance(v, str) and v.strip().isdigit():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 65535:
        raise ValueError(f"invalid port {orig!r}: expected 0..65535 or 'lo-hi'")
    return v


def parse_ports(v: Any) -> tuple[int, int] | None:
    if v is None:
        return None
    if isinstance(v, str):
        parts = re.split(r"\s*[-:]\s*", v.strip())
        if len(parts) == 1:
            lo = hi = _port(parts[0], v)
        elif len(parts) == 2:
            lo, hi = _port(parts[0], v), _port(parts[1], v)
        else:
            raise ValueError(f"invalid port range {v!r}: expected 'lo-hi'")
    elif isinstance(v, (list, tuple)) and len(v) == 2:
        lo, hi = _port(v[0], v), _port(v[1], v)
    else:
        lo = hi = _port(v, v)
    if lo > hi:
        raise ValueError(f"invalid port range {v!r}: {lo} > {hi}")
    return lo, hi


def parse_dscp(v: Any) -> int | None:
    return _name_or_number(v, "dscp", DSCP_NAMES, 63, "use 0..63 or a name (ef, af11..af43, cs0..cs7)", 0)


def _u32(s: Any, orig: Any) -> int:
    if isinstance(s, str):
        try:
            s = int(s.strip(), 0)
        except ValueError:
            raise ValueError(f"invalid mark {orig!r}: expected an int, '0x10' or '0x10/0xff'") from None
    if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s <= U32:
        raise ValueError(f"invalid mark {orig!r}: value and mask must be 32-bit unsigned")
    return s


def parse_mark(v: Any) -> tuple[int, int] | None:
    if v is None:
        return None
    if isinstance(v, str) and "/" in v:
        a, _, b = v.partition("/")
        value, mask = _u32(a, v), _u32(b, v)
    elif isinstance(v, (list, tuple)) and len(v) == 2:
        value, mask = _u32(v[0], v), _u32(v[1], v)
    else:
        value, mask = _u32(v, v), U32
    if value & ~mask:
        raise ValueError(f"invalid mark {v!r}: value has bits outside the mask, it can never match")
    return value, mask


def parse_ifname(v: Any) -> str | None:
    """Linux interface name (dev_valid_name), optionally ending in '+' as an iptables-style prefix."""
    if v is None:
        return None
    if not isinstance(v, str):
        raise ValueError(f"invalid interface name {v!r}")
    base = v[:-1] if v.endswith("+") else v
    if (not v.isascii() or not v.isprintable() or len(v) > 15 or base in (".", "..") or (not base and not v)
            or re.search(r"[\s/:+]", base)):
        raise ValueError(f"invalid interface name {v!r}: at most 15 printable ASCII characters, no '/', ':' or blanks")
    return v


def opt_rate(v: Any) -> int | None:
    return None if v is None else parse_rate(v)


def opt_size(v: Any) -> int | None:
    """A tc size that must hold at least one byte (bursts, quantum, byte limits)."""
    if v is None:
        return None
    n = parse_size(v)
    if n < 1:
        raise ValueError(f"invalid size {v!r}: must be at least 1 byte")
    return n


Rate = Annotated[int, BeforeValidator(parse_rate)]
OptRate = Annotated[int | None, BeforeValidator(opt_rate)]
OptSize = Annotated[int | None, BeforeValidator(opt_size)]


def opt_time(v: Any) -> float | None:
    if v is None:
        return None
    if isinstance(v, bool):
        raise ValueError(f"invalid time {v!r}")
    return parse_time(v)


def rate_or_zero(v: Any) -> int:
    """A per-host rate: a tc rate, or 0 for "an equal share of the class among active hosts"."""
    if v in (0, "0"):
        return 0
    return parse_rate(v)


OptTime = Annotated[float | None, BeforeValidator(opt_time)]


def parse_cidrs(v: Any) -> str | tuple[str, ...] | None:
    """One CIDR, or a list of them (a subscriber's devices): stored as a string when there is one, a tuple of
    distinct CIDRs (first occurrence kept, in the given order) when there are several.

    The one-address form stays a plain string so that every existing single-address match reads the same."""
    if not isinstance(v, (list, tuple)):
        return parse_cidr(v)
    if not v:
        raise ValueError("an empty address list matches nothing: leave the field out to match any address")
    if len(v) > MAX_MATCH_ADDRESSES:
        raise ValueError(f"{len(v):,} addresses: at most {MAX_MATCH_ADDRESSES:,} per class")
    cidrs = tuple(dict.fromkeys(parse_cidr(item) for item in v))
    return cidrs[0] if len(cidrs) == 1 else cidrs  # type: ignore[return-value]


def cidr_list(v: str | tuple[str, ...] | None) -> tuple[str, ...]:
    """A stored src/dst as a tuple of CIDRs (empty: any address)."""
    if v is None:
        return ()
    return (v,) if isinstance(v, str) else v


def cidr_family(cidr: str | None) -> int:
    """IP version of a stored (normalised) CIDR, 0 for none."""
    return 0 if cidr is None else 6 if ":" in cidr else 4


def address_pairs(src: str | tuple[str, ...] | None, dst: str | tuple[str, ...] | None
                  ) -> Iterator[tuple[str | None, str | None]]:
    """The single-address ``(src, dst)`` pairs a stored src/dst stand for: one per pair of the same IP family
    (None: any address).  A classifier that takes one address per rule gives each the same class."""
    for s in cidr_list(src) or (None,):
        for d in cidr_list(dst) or (None,):
            if s is None or d is None or cidr_family(s) == cidr_family(d):
                yield s, d


Cidrs = Annotated[str | tuple[str, ...] | None, BeforeValidator(parse_cidrs)]
Proto = Annotated[int | None, BeforeValidator(parse_proto)]
Ports = Annotated[tuple[int, int] | None, BeforeValidator(parse_ports)]
Dscp = Annotated[int | None, BeforeValidator(parse_dscp)]
Mark = Annotated[tuple[int, int] | None, BeforeValidator(parse_mark)]
IfName = Annotated[str | None, BeforeValidator(parse_ifname)]
PerHostRate = Annotated[int, BeforeValidator(rate_or_zero)]
Time = Annotated[float, BeforeValidator(opt_time)]
