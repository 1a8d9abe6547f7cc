"""Header parsing (imqd.packet) against packets built with scapy, plus fuzzing."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_RR
from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    Jumbo,
    PadN,
)
from scapy.layers.ipsec import AH
from scapy.layers.sctp import SCTP
from scapy.packet import Raw

from imqd.packet import MalformedPacket, PacketInfo, parse_headers

COPY_RANGE = 128  # what the workers ask NFQUEUE to copy

A4, B4 = "198.18.1.2", "198.18.2.3"
A6, B6 = "2001:db8::1", "2001:db8:ffff::2"


def ip4(s: str) -> int:
    return int(ipaddress.IPv4Address(s))


def ip6(s: str) -> int:
    return int(ipaddress.IPv6Address(s))


def ah(nh: int, icv_len: int = 12) -> AH:
    """An AH header; scapy fills neither its next header nor its length outside IPsec SAs."""
    return AH(nh=nh, payloadlen=(12 + icv_len) // 4 - 2, spi=7, icv=b"\x00" * icv_len)


def parse(pkt: object, copy: int = COPY_RANGE) -> PacketInfo:
    return parse_headers(bytes(pkt)[:copy])  # type: ignore[call-overload]


# --- IPv4 ---------------------------------------------------------------------------------------


def test_ipv4_tcp_length_comes_from_header_not_from_the_copied_prefix() -> None:
    pkt = IP(src=A4, dst=B4, tos=0xB8) / TCP(sport=40000, dport=443) / Raw(b"x" * 1400)
    info = parse(pkt)
    assert (info.family, info.src, info.dst, info.proto) == (4, ip4(A4), ip4(B4), 6)
    assert (info.sport, info.dport) == (40000, 443)
    assert info.dscp == 46  # tos 0xb8 = EF
    assert info.length == len(bytes(pkt)) == 1440
    assert info.fragment is False


@pytest.mark.parametrize(
    ("l4", "proto", "ports"),
    [
        (UDP(sport=53, dport=5353), 17, (53, 5353)),
        (SCTP(sport=9, dport=36412), 132, (9, 36412)),
        (ICMP(type=8, id=7, seq=1), 1, (-1, -1)),
    ],
)
def test_ipv4_l4_protocols(l4: object, proto: int, ports: tuple[int, int]) -> None:
    info = parse(IP(src=A4, dst=B4) / l4 / Raw(b"p" * 100))  # type: ignore[operator]
    assert info.proto == proto
    assert (info.sport, info.dport) == ports


def test_ipv4_with_options() -> None:
    pkt = IP(src=A4, dst=B4, options=[IPOption_RR(routers=["198.18.0.1", "198.18.0.2"])]) / UDP(sport=1, dport=2)
    raw = bytes(pkt)
    assert raw[0] & 15 > 5
    info = parse_headers(raw)
    assert (info.sport, info.dport, info.length) == (1, 2, len(raw))


@pytest.mark.parametrize(("frag", "flags"), [(1, ""), (185, "MF"), (8191, "")])
def test_ipv4_fragments(frag: int, flags: str) -> None:
    first = IP(src=A4, dst=B4, flags="MF", frag=0) / UDP(sport=1000, dport=2000) / Raw(b"a" * 64)
    later = IP(src=A4, dst=B4, frag=frag, flags=flags, proto=17) / Raw(b"\x03\xe8\x07\xd0" + b"b" * 60)
    df = IP(src=A4, dst=B4, flags="DF") / UDP(sport=1000, dport=2000)
    f1, f2, whole = parse(first), parse(later), parse(df)
    assert f1.fragment and (f1.sport, f1.dport) == (1000, 2000)
    assert f2.fragment and (f2.sport, f2.dport) == (-1, -1)  # bytes that look like ports are payload
    assert f2.proto == 17
    assert not whole.fragment and whole.dport == 2000


def test_truncated_l4_is_not_malformed() -> None:
    # total length says the packet ends 2 bytes into the TCP header
    raw = bytearray(bytes(IP(src=A4, dst=B4) / TCP(sport=1, dport=2)))
    struct.pack_into("!H", raw, 2, 22)
    info = parse_headers(bytes(raw))
    assert (info.proto, info.sport, info.dport, info.length) == (6, -1, -1, 22)
    # or the capture stops inside the TCP header
    info = parse(IP(src=A4, dst=B4) / TCP(sport=1, dport=2), copy=22)
    assert (info.sport, info.dport, info.length) == (-1, -1, 40)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "empty"),
        (bytes(IP(src=A4, dst=B4))[:19], "truncated"),
        (b"\x55" + bytes(IP(src=A4, dst=B4))[1:], "version 5"),
        (b"\x00" * 40, "version 0"),
        (b"\x44" + bytes(IP(src=A4, dst=B4))[1:], "IHL"),
        (bytes(IP(src=A4, dst=B4, len=19)), "total length"),
        (bytes(IP(src=A4, dst=B4, ihl=8, len=30)) + b"\x00" * 20, "total length"),
        (bytes(IP(src=A4, dst=B4, ihl=15, len=100))[:40], "options truncated"),
    ],
)
def test_ipv4_malformed(raw: bytes, reason: str) -> None:
    with pytest.raises(MalformedPacket, match=reason):
        parse_headers(raw)


# --- IPv6 ---------------------------------------------------------------------------------------


def test_ipv6_tcp() -> None:
    pkt = IPv6(src=A6, dst=B6, tc=0x28 << 2) / TCP(sport=5001, dport=80) / Raw(b"y" * 1300)
    info = parse(pkt)
    assert (info.family, info.src, info.dst, info.proto) == (6, ip6(A6), ip6(B6), 6)
    assert (info.sport, info.dport, info.dscp) == (5001, 80, 0x28)
    assert info.length == len(bytes(pkt)) == 40 + 20 + 1300
    assert not info.fragment


def test_ipv6_icmpv6_has_no_ports() -> None:
    info = parse(IPv6(src=A6, dst=B6) / ICMPv6EchoRequest(id=1, seq=2))
    assert (info.proto, info.sport, info.dport) == (58, -1, -1)


@pytest.mark.parametrize(
    "exts",
    [
        [IPv6ExtHdrHopByHop()],
        [IPv6ExtHdrDestOpt(options=[PadN(optdata=b"\x00" * 10)])],
        [IPv6ExtHdrRouting(addresses=["2001:db8::9"])],
        [IPv6ExtHdrHopByHop(), IPv6ExtHdrRouting(addresses=["2001:db8::9"]), IPv6ExtHdrDestOpt()],
        [ah(17)],
        [IPv6ExtHdrHopByHop(), ah(60, icv_len=20), IPv6ExtHdrDestOpt()],
    ],
)
def test_ipv6_extension_header_chain(exts: list[object]) -> None:
    pkt = IPv6(src=A6, dst=B6)
    for e in exts:
        pkt = pkt / e  # type: ignore[operator]
    pkt = pkt / UDP(sport=4000, dport=4500) / Raw(b"z" * 200)
    info = parse(pkt)
    assert (info.proto, info.sport, info.dport) == (17, 4000, 4500)
    assert info.length == len(bytes(pkt))


@pytest.mark.parametrize(("offset", "m"), [(1, 0), (9, 1), (8191, 0)])
def test_ipv6_fragments(offset: int, m: int) -> None:
    first = IPv6(src=A6, dst=B6) / IPv6ExtHdrFragment(m=1, offset=0, id=5) / UDP(sport=7, dport=8) / Raw(b"a" * 64)
    later = IPv6(src=A6, dst=B6) / IPv6ExtHdrFragment(nh=17, m=m, offset=offset, id=5) / Raw(b"\x00\x07\x00\x08" * 8)
    atomic = IPv6(src=A6, dst=B6) / IPv6ExtHdrFragment(m=0, offset=0) / UDP(sport=7, dport=8)
    f1, f2, a = parse(first), parse(later), parse(atomic)
    assert f1.fragment and (f1.proto, f1.sport, f1.dport) == (17, 7, 8)
    assert f2.fragment and (f2.proto, f2.sport, f2.dport) == (17, -1, -1)
    assert not a.fragment and (a.sport, a.dport) == (7, 8)  # RFC 6946 atomic fragment is a whole packet


@pytest.mark.parametrize(("nh", "layer"), [(50, Raw(b"\x00\x00\x00\x07" + b"e" * 40)), (59, Raw(b""))])
def test_ipv6_walk_stops_at_esp_and_no_next_header(nh: int, layer: object) -> None:
    pkt = IPv6(src=A6, dst=B6, nh=nh) / layer  # type: ignore[operator]
    info = parse(pkt)
    assert (info.proto, info.sport, info.dport) == (nh, -1, -1)
    assert info.length == len(bytes(pkt))


def test_ipv6_chain_past_the_capture_is_not_malformed() -> None:
    # a 256-byte hop-by-hop header: the chain is fine, only our 128-byte copy cannot see past it
    hbh = IPv6ExtHdrHopByHop(options=[PadN(optdata=b"\x00" * 252)])
    pkt = IPv6(src=A6, dst=B6) / hbh / IPv6ExtHdrDestOpt() / TCP(sport=1, dport=2)
    info = parse(pkt)
    assert info.length == len(bytes(pkt))
    assert (info.sport, info.dport) == (-1, -1)
    assert info.proto == 60  # the header we could not read past


def test_ipv6_chain_past_the_payload_is_malformed() -> None:
    raw = bytearray(bytes(IPv6(src=A6, dst=B6) / IPv6ExtHdrDestOpt(options=[PadN(optdata=b"\x00" * 20)]) / UDP()))
    struct.pack_into("!H", raw, 4, 16)  # payload length shorter than the 24-byte option header
    with pytest.raises(MalformedPacket, match="past the payload"):
        parse_headers(bytes(raw))


def test_a_header_without_length_is_a_big_packet_of_at_least_64k() -> None:
    """BIG TCP (GSO/GRO above 64 KB) leaves the length out of the header: not malformed, not charged as 0."""
    v4 = bytearray(bytes(IP(src=A4, dst=B4) / TCP(sport=1, dport=2) / Raw(b"x" * 200)))
    struct.pack_into("!H", v4, 2, 0)
    info = parse_headers(bytes(v4[:COPY_RANGE]))
    assert (info.length, info.sport, info.dport) == (65536, 1, 2)
    # IPv6 the way kernels up to 6.x build it: payload length 0 and a hop-by-hop jumbo option
    jumbo = IPv6ExtHdrHopByHop(options=[Jumbo(jumboplen=100000)])
    v6 = bytearray(bytes(IPv6(src=A6, dst=B6) / jumbo / TCP(sport=3, dport=4) / Raw(b"x" * 200)))
    struct.pack_into("!H", v6, 4, 0)
    info = parse_headers(bytes(v6[:COPY_RANGE]))
    assert (info.length, info.proto, info.sport, info.dport) == (40 + 65536, 6, 3, 4)
    # an IPv6 packet with payload length 0 and nothing after the header is a 40-byte packet, as before
    bare = bytes(IPv6(src=A6, dst=B6, nh=59, plen=0))
    assert parse_headers(bare).length == 40
    # IPv4 total length 0 with nothing after the header cannot be BIG TCP: still malformed
    with pytest.raises(MalformedPacket, match="total length 0"):
        parse_headers(bytes(v4[:20]))


def test_ipv6_l4_beyond_payload_length_has_no_ports() -> None:
    raw = bytearray(bytes(IPv6(src=A6, dst=B6) / UDP(sport=1, dport=2)))
    struct.pack_into("!H", raw, 4, 3)
    info = parse_headers(bytes(raw))
    assert (info.sport, info.dport, info.length) == (-1, -1, 43)


def test_ipv6_short_header_is_malformed() -> None:
    with pytest.raises(MalformedPacket, match="IPv6 header truncated"):
        parse_headers(bytes(IPv6(src=A6, dst=B6))[:39])


# --- flow hash ----------------------------------------------------------------------------------


def test_flow_hash_is_per_five_tuple() -> None:
    a = parse(IP(src=A4, dst=B4) / TCP(sport=1, dport=2) / Raw(b"1"))
    b = parse(IP(src=A4, dst=B4, ttl=3, id=99) / TCP(sport=1, dport=2, seq=77) / Raw(b"22222"))
    c = parse(IP(src=A4, dst=B4) / TCP(sport=1, dport=3))
    d = parse(IP(src=A4, dst=B4) / UDP(sport=1, dport=2))
    assert a.flow == b.flow
    assert len({a.flow, c.flow, d.flow}) == 3
    assert all(0 <= x.flow < 2**63 for x in (a, c, d))


# --- against scapy, for generated headers -------------------------------------------------------

ports = st.integers(0, 65535)


@st.composite
def v4_packets(draw: st.DrawFn) -> tuple[bytes, dict[str, int]]:
    src, dst = draw(st.integers(0, 2**32 - 1)), draw(st.integers(0, 2**32 - 1))
    tos, sport, dport = draw(st.integers(0, 255)), draw(ports), draw(ports)
    l4 = draw(st.sampled_from(["tcp", "udp", "icmp"]))
    payload = draw(st.binary(max_size=300))
    layer = {"tcp": TCP(sport=sport, dport=dport), "udp": UDP(sport=sport, dport=dport), "icmp": ICMP()}[l4]
    pkt = IP(src=str(ipaddress.IPv4Address(src)), dst=str(ipaddress.IPv4Address(dst)), tos=tos) / layer / payload
    has_ports = l4 != "icmp"
    want = {"family": 4, "src": src, "dst": dst, "proto": {"tcp": 6, "udp": 17, "icmp": 1}[l4],
            "sport": sport if has_ports else -1, "dport": dport if has_ports else -1, "dscp": tos >> 2}  # fmt: skip
    return bytes(pkt), want


@st.composite
def v6_packets(draw: st.DrawFn) -> tuple[bytes, dict[str, int]]:
    src, dst = draw(st.integers(0, 2**128 - 1)), draw(st.integers(0, 2**128 - 1))
    tc, sport, dport = draw(st.integers(0, 255)), draw(ports), draw(ports)
    pkt = IPv6(src=str(ipaddress.IPv6Address(src)), dst=str(ipaddress.IPv6Address(dst)), tc=tc)
    ext_kinds = draw(st.lists(st.sampled_from([0, 60, 43, 51]), max_size=3))
    l4 = draw(st.sampled_from(["tcp", "udp"]))
    for i, kind in enumerate(ext_kinds):
        pad = draw(st.integers(0, 3)) * 8
        following = ext_kinds[i + 1] if i + 1 < len(ext_kinds) else (6 if l4 == "tcp" else 17)
        pkt = pkt / {
            0: lambda: IPv6ExtHdrHopByHop(options=[PadN(optdata=b"\x00" * (pad + 4))]),
            60: lambda: IPv6ExtHdrDestOpt(options=[PadN(optdata=b"\x00" * (pad + 4))]),
            43: lambda: IPv6ExtHdrRouting(addresses=["2001:db8::1"] * draw(st.integers(0, 2))),
            51: lambda: ah(following, icv_len=pad + 4),
        }[kind]()
    pkt = pkt / (TCP(sport=sport, dport=dport) if l4 == "tcp" else UDP(sport=sport, dport=dport))
    pkt = pkt / draw(st.binary(max_size=300))
    want = {"family": 6, "src": src, "dst": dst, "proto": 6 if l4 == "tcp" else 17,
            "sport": sport, "dport": dport, "dscp": tc >> 2}  # fmt: skip
    return bytes(pkt), want


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(v4_packets(), v6_packets()))
def test_agrees_with_scapy(case: tuple[bytes, dict[str, int]]) -> None:
    raw, want = case
    full = parse_headers(raw)
    for k, v in want.items():
        assert getattr(full, k) == v, k
    assert full.length == len(raw)
    prefix = parse_headers(raw[:COPY_RANGE])
    assert prefix.length == len(raw)  # never the prefix length
    if prefix.sport != -1:  # ports visible in the prefix must be the same ones
        assert (prefix.sport, prefix.dport, prefix.flow) == (full.sport, full.dport, full.flow)


# --- fuzzing ------------------------------------------------------------------------------------


def _check_invariants(info: PacketInfo, data: bytes) -> None:
    assert info.family in (4, 6)
    assert 0 <= info.proto <= 255 and 0 <= info.dscp <= 63
    assert (info.sport == -1) == (info.dport == -1)
    assert -1 <= info.sport <= 65535 and -1 <= info.dport <= 65535
    assert info.length >= (20 if info.family == 4 else 40)
    assert info.src < 2 ** (32 if info.family == 4 else 128)
    assert info.flow >= 0


@settings(max_examples=400)
@given(st.binary(max_size=160))
def test_fuzz_arbitrary_bytes(data: bytes) -> None:
    try:
        info = parse_headers(data)
    except MalformedPacket as e:
        assert str(e)
    else:
        _check_invariants(info, data)


@settings(max_examples=400)
@given(
    st.sampled_from([0x45, 0x46, 0x4F, 0x60, 0x61]),
    st.sampled_from([0, 6, 17, 43, 44, 51, 58, 60, 132]),
    st.binary(min_size=0, max_size=200),
)
def test_fuzz_plausible_headers(first: int, nh: int, rest: bytes) -> None:
    data = bytearray([first]) + bytearray(rest)
    if len(data) > 9:
        data[9 if first >> 4 == 4 else 6] = nh  # steer into the L4 / extension-header paths
    try:
        info = parse_headers(bytes(data))
    except MalformedPacket:
        return
    _check_invariants(info, bytes(data))


@settings(max_examples=150, deadline=None)
@given(st.one_of(v4_packets(), v6_packets()), st.integers(0, 200), st.integers(0, 255), st.integers(0, 160))
def test_fuzz_mutated_real_packets(case: tuple[bytes, dict[str, int]], pos: int, byte: int, cut: int) -> None:
    raw = bytearray(case[0])
    if pos < len(raw):
        raw[pos] = byte
    data = bytes(raw[:cut])
    try:
        info = parse_headers(data)
    except MalformedPacket:
        return
    _check_invariants(info, data)
