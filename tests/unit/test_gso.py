"""What a GSO/GRO super-packet is charged: imqd.gso.wire_cost against a segmenting reference, and the
worker's device table (imqd.links.LinkCosts) with readers the test controls."""

from __future__ import annotations

import struct
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrHopByHop, Jumbo, PadN
from scapy.packet import Raw

from imqd.gso import BIG_LENGTH, WireCost, wire_cost
from imqd.links import LinkCosts, link_size_attrs
from imqd.packet import parse_headers

COPY = 128  # the worker's copy range


def segmented(length: int, hdr: int, seg_payload: int) -> tuple[int, int]:
    """The reference: cut the payload into ``seg_payload``-byte segments, each with its own ``hdr`` bytes of
    headers, and add up what the wire carries -- (IP bytes, segments)."""
    payload = length - hdr
    sizes = [min(seg_payload, payload - at) for at in range(0, payload, seg_payload)] or [0]
    return sum(s + hdr for s in sizes), len(sizes)


def v4_tcp(length: int, ip_opts: int = 0, tcp_opts: int = 0) -> bytes:
    """The first COPY bytes of an IPv4/TCP packet of ``length`` bytes with option words as given."""
    ihl, doff = 5 + ip_opts, 5 + tcp_opts
    head = bytearray(ihl * 4 + doff * 4)
    head[0] = 0x40 | ihl
    struct.pack_into("!H", head, 2, length)
    head[9] = 6
    head[ihl * 4 + 12] = doff << 4
    return bytes(head + bytes(max(0, min(length, COPY) - len(head))))[:COPY]


def v6_udp(length: int, ext_words: int = 0) -> bytes:
    """IPv6 with a destination-options header of ``ext_words`` 8-byte words (0: none), then UDP."""
    head = bytearray(40)
    head[0] = 0x60
    struct.pack_into("!H", head, 4, length - 40)
    if ext_words:
        head[6] = 60
        head += bytes([17, ext_words - 1]) + bytes(ext_words * 8 - 2)
    else:
        head[6] = 17
    head += bytes(8)
    return bytes(head)[:COPY]


@settings(max_examples=400, deadline=None)
@given(ip_opts=st.integers(0, 10), tcp_opts=st.integers(0, 10), payload=st.integers(1, 65535 - 120),
       mtu=st.integers(576, 9000))
def test_tcp_at_full_segment_size_is_charged_exactly_as_segmenting_it(ip_opts: int, tcp_opts: int, payload: int,
                                                                      mtu: int) -> None:
    """A sender whose segments fill the MTU: the charge is the segmented packets' IP bytes, to the byte --
    the kernel's qdisc_pkt_len_init sum, skb->len + (gso_segs - 1) * hdr_len, minus the link headers."""
    hdr = (5 + ip_opts) * 4 + (5 + tcp_opts) * 4
    length = hdr + payload
    if length > 65535 or mtu <= hdr:
        return
    want_bytes, want_segs = segmented(length, hdr, mtu - hdr)
    got = wire_cost(v4_tcp(length, ip_opts, tcp_opts), mtu)
    assert (got.ip_bytes, got.segments) == (want_bytes, want_segs)
    assert got.ip_bytes == length + (want_segs - 1) * hdr and got.exact and got.length == length


@settings(max_examples=400, deadline=None)
@given(payload=st.integers(1, 65000), mtu=st.integers(1280, 9000), smaller=st.integers(0, 5000),
       ext_words=st.integers(0, 4))
def test_a_sender_with_smaller_segments_is_charged_less_by_the_documented_bound(payload: int, mtu: int,
                                                                                smaller: int, ext_words: int) -> None:
    """Segments smaller than the MTU allows (a clamped MSS, UDP GSO's own size): never charged more than the
    truth, and short by exactly the headers of the segments the estimate misses (imqd.gso's error bound)."""
    hdr = 40 + ext_words * 8 + 8
    length = hdr + payload
    true_seg = mtu - hdr - smaller
    if length > 65535 or true_seg < 8:
        return
    truth, true_segs = segmented(length, hdr, true_seg)
    got = wire_cost(v6_udp(length, ext_words), mtu)
    est_seg = mtu - hdr
    assert got.segments == -(-payload // est_seg) if length > mtu else got.segments == 1
    assert got.ip_bytes <= truth
    assert truth - got.ip_bytes == (true_segs - got.segments) * hdr
    assert truth - got.ip_bytes < (payload / true_seg - payload / est_seg + 1) * hdr


@settings(max_examples=300, deadline=None)
@given(length=st.integers(20, 65535), extra=st.integers(1, 20000), mtu=st.integers(68, 9000))
def test_never_less_than_the_packet_and_never_less_for_a_longer_one(length: int, extra: int, mtu: int) -> None:
    a = wire_cost(v4_tcp(max(length, 40)), mtu)
    b = wire_cost(v4_tcp(min(max(length, 40) + extra, 65535)), mtu)
    assert a.ip_bytes >= a.length and a.segments >= 1
    assert b.ip_bytes >= a.ip_bytes


@settings(max_examples=500)
@given(st.binary(max_size=160), st.integers(0, 70000))
def test_arbitrary_bytes_never_raise(data: bytes, mtu: int) -> None:
    got = wire_cost(data, mtu)
    assert isinstance(got, WireCost) and got.segments >= 1 and got.ip_bytes >= got.length >= 0


def test_a_packet_that_fits_the_mtu_is_one_segment() -> None:
    raw = bytes(IP() / TCP() / Raw(b"x" * 1460))
    assert wire_cost(raw, 1500) == WireCost(1500, 1500, 1, True)


def test_a_real_64k_tcp_burst_with_timestamps() -> None:
    """What Linux TCP sends: 20 bytes of IP, 32 of TCP (timestamps), 1448-byte segments on a 1500 MTU."""
    pkt = IP(src="198.18.0.1", dst="198.19.0.1") / TCP(options=[("NOP", None), ("NOP", None),
                                                              ("Timestamp", (1, 2))]) / Raw(b"x" * 45 * 1448)
    raw = bytes(pkt)
    got = wire_cost(raw[:COPY], 1500)
    assert (got.length, got.segments, got.ip_bytes) == (len(raw), 45, len(raw) + 44 * 52)
    assert got.ip_bytes == 45 * 1500  # exactly 45 full-size packets on the wire


def test_udp_and_other_protocols() -> None:
    udp = bytes(IP() / UDP() / Raw(b"x" * 4000))  # 4028 bytes: UDP GSO at 1472-byte segments
    assert wire_cost(udp[:COPY], 1500)[1:3] == (len(udp) + 2 * 28, 3)
    gre = bytes(IP(proto=47) / Raw(b"x" * 3980))  # 4000 bytes as IP fragments of 1480 bytes each
    assert wire_cost(gre[:COPY], 1500)[1:3] == (4000 + 2 * 20, 3)
    assert wire_cost(gre[:COPY], 1004)[1:3] == (4000 + 4 * 20, 5)  # 984-byte fragments (a multiple of 8)


def test_ipv6_extension_headers_are_repeated_in_every_segment() -> None:
    pkt = IPv6() / IPv6ExtHdrDestOpt(options=[PadN(optdata=b"\0" * 4)]) / TCP() / Raw(b"x" * 10000)
    raw = bytes(pkt)
    hdr = 40 + 8 + 20
    assert wire_cost(raw[:COPY], 1500)[1:3] == segmented(len(raw), hdr, 1500 - hdr)


def test_big_tcp_without_a_length_is_charged_the_devices_largest_size() -> None:
    v4 = bytearray(bytes(IP() / TCP() / Raw(b"x" * 200)))
    struct.pack_into("!H", v4, 2, 0)
    got = wire_cost(bytes(v4), 1500, unknown_length=185_000)
    assert not got.exact and got.length == 185_000
    assert got.segments == -(-(185_000 - 40) // 1460) and got.ip_bytes == 185_000 + (got.segments - 1) * 40
    assert wire_cost(bytes(v4), 1500).length == BIG_LENGTH  # never below 64 KB, whatever the caller says
    v6 = bytearray(bytes(IPv6() / TCP() / Raw(b"x" * 200)))  # kernels after 6.x: no hop-by-hop, length 0
    struct.pack_into("!H", v6, 4, 0)
    assert wire_cost(bytes(v6), 1500, unknown_length=100_000)[0::3] == (100_000, False)


def test_ipv6_big_tcp_with_the_jumbo_option_has_its_exact_length() -> None:
    """Kernels up to 6.x put the real length in a hop-by-hop jumbo option, which the wire never carries."""
    pkt = IPv6() / IPv6ExtHdrHopByHop(options=[Jumbo(jumboplen=120_008)]) / TCP() / Raw(b"x" * 200)
    raw = bytearray(bytes(pkt))
    struct.pack_into("!H", raw, 4, 0)
    got = wire_cost(bytes(raw[:COPY]), 1500)
    hdr = 40 + 8 + 20  # charged per segment as the kernel's qdisc_pkt_len_init does (transport offset)
    assert got.exact and got.length == 40 + 120_008
    assert got.segments == -(-(got.length - hdr) // (1500 - 60))  # segments carry no hop-by-hop header
    assert got.ip_bytes == got.length + (got.segments - 1) * hdr
    assert parse_headers(bytes(raw[:COPY])).length == 40 + BIG_LENGTH  # the classifier's lower bound


# -- the worker's device table -------------------------------------------------------------------------

@dataclass
class Pkt:
    indev: int = 0
    outdev: int = 0


def links(mtus: dict[int, int], gso_max: int = BIG_LENGTH) -> tuple[LinkCosts, list[int]]:
    asked: list[int] = []

    def gso_max_of(index: int) -> int:
        asked.append(index)
        return gso_max

    return LinkCosts(mtu_of=mtus.get, all_mtus=lambda: list(mtus.values()), gso_max_of=gso_max_of), asked


def test_floor_is_the_smallest_ip_mtu_and_follows_new_devices() -> None:
    table, _ = links({1: 65536, 2: 1500, 3: 16})  # 3: no IP link (a CAN bus): ignored
    assert table.floor == 1500
    table._mtu_of = {1: 65536, 2: 1500, 4: 1420}.get  # a tunnel comes up
    assert table.mtu(4) == 1420 and table.floor == 1420
    assert table.mtu(9) == 1420 and table.cached == {4: 1420}, "a device that is gone is not cached"
    table.refresh()
    assert table.cached == {} and table.floor == 1500


def test_charge_uses_the_output_device_else_the_input_device_and_counts() -> None:
    table, _ = links({1: 9000, 2: 1500})
    raw = bytes(IP() / TCP() / Raw(b"x" * 8960))  # 9000 bytes
    assert table.charge(Pkt(indev=1), raw[:COPY], 14) == 9000 + 14  # arrived on a 9000-byte link: one frame
    segs = -(-8960 // 1460)
    assert table.charge(Pkt(indev=1, outdev=2), raw[:COPY], 14) == 9000 + (segs - 1) * 40 + segs * 14
    assert table.counters() == {"gso_packets": 1, "gso_segments": segs, "gso_bytes": 9000,
                                "gso_unknown_length": 0, "mtu_floor": 1500}


def test_big_tcp_asks_the_device_once() -> None:
    table, asked = links({2: 1500}, gso_max=150_000)
    v4 = bytearray(bytes(IP() / TCP() / Raw(b"x" * 200)))
    struct.pack_into("!H", v4, 2, 0)
    first = table.charge(Pkt(outdev=2), bytes(v4), 0)
    assert table.charge(Pkt(outdev=2), bytes(v4), 0) == first == wire_cost(bytes(v4), 1500, 150_000).ip_bytes
    assert asked == [2] and table.unknown_length == 2
    table.refresh()
    table.charge(Pkt(outdev=2), bytes(v4), 0)
    assert asked == [2, 2], "a refresh forgets the sizes too"


def test_the_real_device_table_reads_this_namespace() -> None:
    table = LinkCosts()
    try:
        assert table.mtu(1) >= 68 and table.floor >= 68  # lo exists in every namespace
    finally:
        table.close()


def test_rtnetlink_size_attributes() -> None:
    def attr(kind: int, value: int) -> bytes:
        return struct.pack("=HHI", 8, kind, value)

    body = struct.pack("=BxHiII", 0, 1, 2, 0, 0) + attr(41, 65536) + attr(4, 1500) + attr(64, 185_000)
    reply = struct.pack("=IHHII", 16 + len(body), 16, 0, 1, 0) + body
    assert link_size_attrs(reply) == 185_000
    assert link_size_attrs(reply[:20]) == 0
    assert link_size_attrs(struct.pack("=IHHII", 16 + len(body), 2, 0, 1, 0) + body) == 0  # an error, not a link


@pytest.mark.parametrize("mtu", [1500, 9000])
def test_the_classifier_length_and_the_charge_agree_on_ordinary_packets(mtu: int) -> None:
    raw = bytes(IP() / UDP() / Raw(b"x" * 1000))
    assert parse_headers(raw).length == wire_cost(raw, mtu).ip_bytes == 1028
