"""Reading CIDR prefixes fast: a 10,000-subscriber import reads ~40,000 of them.

``ipaddress.ip_network`` costs ~40 µs per address; the plain forms ``ADDRESS`` and ``ADDRESS/LENGTH`` read
with ``socket.inet_pton`` cost ~2 µs. Everything else (netmask or hostmask forms, scope ids, IPv6 text,
which ``ipaddress`` prints in its own canonical way, and every error, so that messages stay ``ipaddress``'s)
goes through ``ipaddress``, which is also the reference a property test holds these functions to.
"""

from __future__ import annotations

import ipaddress
import socket

__all__ = ["net_bits", "normal_cidr", "cidr_span"]


def _plain(cidr: str) -> tuple[int, str, int, int] | None:
    """(width, address, prefix length, address int) of a plain ``ADDRESS[/LENGTH]`` text, else None."""
    addr, slash, plen = cidr.partition("/")
    if slash and not (plen.isascii() and plen.isdigit() and len(plen) <= 3 and (plen == "0" or plen[0] != "0")):
        return None
    width = 128 if ":" in addr else 32
    if "%" in addr:  # a scope id: ipaddress's business
        return None
    bits = int(plen) if slash else width
    if bits > width:
        return None
    try:
        packed = socket.inet_pton(socket.AF_INET6 if width == 128 else socket.AF_INET, addr)
    except OSError:
        return None
    return width, addr, bits, int.from_bytes(packed, "big")


#: the mask of every prefix length, one object each (a classifier keeps one per rule: 10,000 /32s share one)
_MASKS = {width: tuple(((1 << bits) - 1) << (width - bits) for bits in range(width + 1)) for width in (32, 128)}


def net_bits(cidr: str | None) -> tuple[int, int, int]:
    """(IP version, network int, mask int) of a CIDR, host bits masked off; (0, 0, 0) for None ("any")."""
    if cidr is None:
        return 0, 0, 0
    plain = _plain(cidr)
    if plain is not None:
        width, _, bits, value = plain
        mask = _MASKS[width][bits]
        return (4 if width == 32 else 6), value & mask, mask
    n = ipaddress.ip_network(cidr, strict=False)
    return n.version, int(n.network_address), int(n.netmask)


def normal_cidr(text: str, *, strict: bool = False) -> str:
    """``str(ipaddress.ip_network(text, strict=strict))``, quickly for plain IPv4; raises ipaddress's
    ``ValueError`` (host bits set with ``strict``, a bad address...)."""
    plain = _plain(text)
    if plain is not None and plain[0] == 32:
        _, _, bits, value = plain
        mask = ((1 << bits) - 1) << (32 - bits)
        if value & mask == value or not strict:
            return f"{socket.inet_ntoa((value & mask).to_bytes(4, 'big'))}/{bits}"
    return str(ipaddress.ip_network(text, strict=strict))


def cidr_span(cidr: str) -> tuple[int, int, int, int]:
    """(IP version, first address int, last address int, prefix length) of a valid CIDR."""
    version, first, mask = net_bits(cidr)
    width = 32 if version == 4 else 128
    return version, first, first | (~mask & ((1 << width) - 1)), mask.bit_count()
