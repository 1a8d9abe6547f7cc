"""Per-packet header parsing: the copied prefix of an IP packet -> ``PacketInfo``.

Runs once per packet in the data plane, so it is written for CPython speed:
precompiled ``struct.Struct`` unpackers, one unpack for the whole fixed header,
positional construction of a slotted dataclass, no exceptions on the good path.

The length that rates are charged for is the IP header's (IPv4 total length,
IPv6 payload length + 40), never ``len(data)``: NFQUEUE hands us only a copied
prefix (see shared/NOTES.md).

A header with no length -- IPv4 total length 0, IPv6 payload length 0, with
bytes after the header -- is a GSO/GRO super-packet above 64 KB (BIG TCP; the
IPv6 one may carry a hop-by-hop jumbo option) or an IPv6 jumbogram: the kernel
drops such an IPv4 packet unless it is one, and trims such an IPv6 packet to
its 40 bytes otherwise.  Its ``length`` is the least it can be (65536 bytes of
IPv4 packet or of IPv6 payload); :mod:`imqd.gso` decides what to charge.

What counts as malformed (``MalformedPacket``): too short for the fixed IP
header, a version other than 4/6, IPv4 IHL < 5, an IPv4 total length smaller
than its header (other than the 0 above), IPv4 options cut off by the capture,
and an IPv6 extension-header chain that runs past the payload length.  What is
*not* malformed, because the packet itself may
be fine and we only failed to see enough of it: an L4 header cut off by the
packet end or by the capture (ports -1), and an IPv6 extension chain that runs
past the *captured prefix* but not past the payload length -- then ``proto`` is
the extension header we could not read past and ports are -1.  Reporting that
as malformed would let anyone bypass shaping by padding hop-by-hop options.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from imqd.gso import BIG_LENGTH

__all__ = ["PacketInfo", "MalformedPacket", "parse_headers", "PORT_PROTOS"]

#: IP protocols whose first 4 L4 bytes are source and destination port.
PORT_PROTOS = frozenset((6, 17, 33, 132, 136))  # TCP, UDP, DCCP, SCTP, UDP-Lite

# IPv6 extension headers with the generic (next, hdr_ext_len in 8-octet units beyond the first 8)
# layout: hop-by-hop, routing, destination options, mobility, HIP, shim6 (RFC 7045).
_EXT_GENERIC = frozenset((0, 43, 60, 135, 139, 140))
_EXT_FRAGMENT = 44
_EXT_AH = 51  # length in 4-octet units, minus 2
_EXT_ALL = _EXT_GENERIC | {_EXT_FRAGMENT, _EXT_AH}
# ESP (50) and No Next Header (59) end the walk: nothing after them is readable.

_V4 = struct.Struct("!BBHHHBBHII")  # ver/ihl, tos, total len, id, flags/frag, ttl, proto, csum, src, dst
_V6 = struct.Struct("!IHBBQQQQ")  # ver/tc/flow, payload len, next hdr, hop limit, src hi/lo, dst hi/lo
_PORTS = struct.Struct("!HH")
_U16 = struct.Struct("!H")
_MASK63 = (1 << 63) - 1


class MalformedPacket(ValueError):
    """The bytes are not a well-formed IPv4/IPv6 packet; ``str()`` says why."""


@dataclass(slots=True)
class PacketInfo:
    """What the classifier and the shaper need to know about one packet.

    Addresses are ints (IPv4 32-bit, IPv6 128-bit) so CIDR matching is a mask
    and a compare.  ``sport``/``dport`` are -1 when the protocol has no ports,
    the packet is a non-first fragment, or the L4 header was not seen.
    ``length`` is the whole IP packet's length from its header.  ``flow`` is a
    non-negative hash of the 5-tuple (plus family), stable across processes
    (ints hash deterministically in CPython).
    """

    family: int
    src: int
    dst: int
    proto: int
    sport: int
    dport: int
    dscp: int
    length: int
    fragment: bool
    flow: int


def parse_headers(data: bytes) -> PacketInfo:
    """Parse the IP (and L4 port) headers at the start of ``data``.

    Raises ``MalformedPacket`` (a ``ValueError``) and nothing else for any ``bytes`` input.
    """
    n = len(data)
    if n == 0:
        raise MalformedPacket("empty packet")
    version = data[0] >> 4
    sport = dport = -1
    if version == 4:
        if n < 20:
            raise MalformedPacket(f"IPv4 header truncated: {n} < 20 bytes")
        vihl, tos, total, _ident, frag, _ttl, proto, _csum, src, dst = _V4.unpack_from(data)
        ihl = (vihl & 15) << 2
        if ihl < 20:
            raise MalformedPacket(f"IPv4 IHL {ihl >> 2} < 5")
        if total < ihl:
            if total or n <= ihl:
                raise MalformedPacket(f"IPv4 total length {total} < header length {ihl}")
            total = BIG_LENGTH  # BIG TCP: see the module doc
        if n < ihl:
            raise MalformedPacket(f"IPv4 options truncated: {n} < {ihl} bytes")
        foff = frag & 0x1FFF
        if foff == 0 and proto in PORT_PROTOS:
            end = ihl + 4
            if end <= n and end <= total:
                sport, dport = _PORTS.unpack_from(data, ihl)
        return PacketInfo(
            4, src, dst, proto, sport, dport, tos >> 2, total, foff != 0 or (frag & 0x2000) != 0,
            hash((4, src, dst, proto, sport, dport)) & _MASK63,
        )  # fmt: skip
    if version == 6:
        if n < 40:
            raise MalformedPacket(f"IPv6 header truncated: {n} < 40 bytes")
        vtcfl, plen, nh, _hlim, s_hi, s_lo, d_hi, d_lo = _V6.unpack_from(data)
        src = s_hi << 64 | s_lo
        dst = d_hi << 64 | d_lo
        end = 40 + plen if plen or n <= 40 else 40 + BIG_LENGTH  # BIG TCP or a jumbogram: see the module doc
        fragment = False
        off = 40
        ports = True
        if nh in _EXT_ALL:
            while nh in _EXT_ALL:
                if off + 8 > end:
                    raise MalformedPacket(f"IPv6 extension header {nh} at offset {off} runs past the payload")
                if off + 4 > n:  # cut off by the capture, not by the packet: see module doc
                    ports = False
                    break
                if nh == _EXT_FRAGMENT:
                    fo = _U16.unpack_from(data, off + 2)[0]
                    nh = data[off]
                    off += 8
                    if fo & 0xFFF9:  # offset != 0 or more-fragments set (atomic fragments are whole)
                        fragment = True
                        if fo >> 3:  # non-first fragment: no L4 header here
                            ports = False
                            break
                    continue
                hlen = (data[off + 1] + 2) << 2 if nh == _EXT_AH else (data[off + 1] + 1) << 3
                if off + hlen > end:
                    raise MalformedPacket(f"IPv6 extension header {nh} at offset {off} runs past the payload")
                nh = data[off]
                off += hlen
        if ports and nh in PORT_PROTOS and off + 4 <= n and off + 4 <= end:
            sport, dport = _PORTS.unpack_from(data, off)
        return PacketInfo(
            6, src, dst, nh, sport, dport, (vtcfl >> 22) & 0x3F, end, fragment,
            hash((6, src, dst, nh, sport, dport)) & _MASK63,
        )  # fmt: skip
    raise MalformedPacket(f"bad IP version {version}")
