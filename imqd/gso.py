"""What a GSO/GRO super-packet puts on the wire, from its copied header bytes -- pure, no I/O.

With ``NFQA_CFG_F_GSO`` (imqd.nfnetlink) a worker sees a TCP burst of up to 64 KB as *one* packet: the
kernel queues GSO (locally sent, not yet segmented) and GRO (received, merged) packets whole.  The wire
carries it as ``segs`` segments, each with its own copy of the headers.  Kernel HTB charges exactly that
(``qdisc_pkt_len_init`` in net/core/dev.c): ``skb->len + (gso_segs - 1) * hdr_len``, where ``hdr_len`` is
every header a segment repeats (link + network + transport).  imqd charges IP bytes plus ``overhead`` per
packet, so the same sum is::

    L + (segs - 1) * H + segs * overhead

``L`` is the IP length from the header (GRO updates IPv4 ``tot_len`` and IPv6 ``payload_len``), ``H`` the
IP header with its extension headers plus the TCP header (its data offset, so options count) or the
8-byte UDP header.  :func:`wire_cost` returns ``L + (segs - 1) * H`` and ``segs``; the caller adds the
overhead per segment.

**The segment count is estimated.**  The kernel's ``gso_segs`` / ``gso_size`` are not exported to user
space, so the segment size is taken as the largest the link allows, ``mtu - H`` (the MTU of the device the
packet was queued for: the input device at ingress, the output device at egress), and
``segs = ceil((L - H) / (mtu - H))``.  A sender's segments are never larger than that (a GRO segment
arrived through the input link; a GSO packet must fit the output link or the kernel refuses to forward
it), so the count is never too high: imqd never charges more than kernel HTB.  It is too low when the
sender's segments are smaller -- an MSS clamped below ``mtu - H``, a path MTU below the link's, a UDP
GSO sender that picks its own segment size.  With true segment payload ``m`` and estimate
``M = mtu - H``, the charge is short by exactly ``(ceil(P/m) - ceil(P/M)) * (H + overhead)`` bytes for
``P = L - H`` payload bytes: less than ``(P/m - P/M + 1) * (H + overhead)``.  For a 64 KB TCP packet
(45 segments of 1448 bytes on a 1500-byte MTU, H = 52, overhead 14) sent with MSS 1400 instead that is
2 segments' headers, 132 bytes (0.2 % of what the wire carries); with MSS 1200, 10 (0.96 %); with the
536-byte minimum MSS, 77 (6.9 %).

Other cases:

* **BIG TCP** (GSO/GRO above 64 KB, opt-in per device): the header has no length (IPv4 ``tot_len`` 0,
  IPv6 ``payload_len`` 0, with or without the hop-by-hop jumbo option depending on the kernel).  The
  jumbo option's 32-bit length is used when present; otherwise the real length is not in the copied
  bytes and netfilterqueue does not pass ``NFQA_CAP_LEN`` on, so the packet is charged as
  ``unknown_length`` (the caller passes the device's largest GSO/GRO size): never less than the truth,
  up to that size / 64 KB times more.  ``WireCost.exact`` says which.
* **UDP** is charged as UDP GSO (8-byte UDP header per segment).  A large UDP datagram that the kernel
  fragments instead (IP fragments carry no UDP header) differs by at most 8 bytes per segment and the
  rounding of fragment offsets to 8 bytes.
* **Other protocols** larger than the MTU are charged as IP fragments: the IP header per fragment and a
  fragment payload of ``mtu - H`` rounded down to 8 bytes (exact for IPv4; IPv6 adds an 8-byte fragment
  header per fragment that is not counted).
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["WireCost", "wire_cost", "BIG_LENGTH", "MIN_MTU"]

#: The least length of a packet whose header has no length (BIG TCP): it is only used above 64 KB.
BIG_LENGTH = 65536
#: The smallest MTU an IP link may have (IPv4's 68): below it nothing here is meaningful.
MIN_MTU = 68

_TCP, _UDP, _UDPLITE = 6, 17, 136
# IPv6 extension headers a GSO packet may carry, with the generic (next, length in 8-octet units) layout,
# and AH (length in 4-octet units).  A fragment header ends the walk: fragments are not GSO packets.
_EXT_GENERIC = frozenset((0, 43, 60, 135, 139, 140))
_EXT_AH = 51
_JUMBO_OPTION = 0xC2  # IPV6_TLV_JUMBO, length 4: the 32-bit payload length (RFC 2675)


class WireCost(NamedTuple):
    """What one packet of IP length ``L`` costs on the wire."""

    length: int  #: L, the IP length the header gives (or ``unknown_length``)
    ip_bytes: int  #: IP bytes of all its segments together: L + (segments - 1) * H
    segments: int  #: how many packets the wire carries (1 for a packet that fits the MTU)
    exact: bool  #: False when the header had no length (BIG TCP) and ``unknown_length`` was assumed


def wire_cost(data: bytes, mtu: int, unknown_length: int = BIG_LENGTH) -> WireCost:
    """What the IP packet whose first bytes are ``data`` puts on a link of ``mtu`` bytes (module doc).

    ``data`` is the copied prefix of a packet the kernel accepted (``parse_headers`` did not refuse it);
    for bytes that are no IP header the answer is one segment of ``len(data)`` bytes.  ``unknown_length``
    is assumed for a BIG TCP packet whose header has no length.
    """
    n = len(data)
    if n < 20:
        return WireCost(n, n, 1, True)
    version = data[0] >> 4
    exact = True
    jumbo_hbh = 0  # bytes of a hop-by-hop header that carries only the jumbo length (not on the wire)
    if version == 4:
        off = (data[0] & 15) << 2
        length = data[2] << 8 | data[3]
        proto = data[9]
        if length == 0:
            length, exact = max(unknown_length, BIG_LENGTH), False
    elif version == 6 and n >= 40:
        off = 40
        plen = data[4] << 8 | data[5]
        proto = data[6]
        length = 40 + plen
        if plen == 0 and n > 40:  # a non-GSO packet with payload length 0 is trimmed to 40 bytes
            length, exact = max(unknown_length, 40 + BIG_LENGTH), False
        while (proto in _EXT_GENERIC or proto == _EXT_AH) and off + 2 <= n:
            if (not exact and proto == 0 and off == 40 and off + 8 <= n
                    and data[42] == _JUMBO_OPTION and data[43] == 4):
                length = 40 + int.from_bytes(data[44:48], "big")
                exact = True
                jumbo_hbh = (data[41] + 1) << 3
            hlen = (data[off + 1] + 2) << 2 if proto == _EXT_AH else (data[off + 1] + 1) << 3
            proto = data[off]
            off += hlen
    else:
        return WireCost(n, n, 1, True)
    if length <= mtu:
        return WireCost(length, length, 1, exact)
    if proto == _TCP:
        l4 = (data[off + 12] >> 4) << 2 if off + 13 <= n else 20
        if l4 < 20:
            l4 = 20
        seg_payload = mtu - (off - jumbo_hbh + l4)
    elif proto == _UDP or proto == _UDPLITE:
        l4 = 8
        seg_payload = mtu - (off - jumbo_hbh + l4)
    else:  # IP fragments: every fragment but the last carries a multiple of 8 bytes
        l4 = 0
        seg_payload = (mtu - (off - jumbo_hbh)) & ~7
    hdr = off + l4
    payload = length - hdr
    if seg_payload <= 0 or payload <= seg_payload:
        return WireCost(length, length, 1, exact)
    segments = -(-payload // seg_payload)
    return WireCost(length, length + (segments - 1) * hdr, segments, exact)
