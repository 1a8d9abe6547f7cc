"""Classification (imqd.classifier): rule order, every match field, compiled == interpreted."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.all import IP, TCP, UDP

from imqd.classifier import Classifier, Match
from imqd.config import parse_config
from imqd.packet import MalformedPacket, PacketInfo, parse_headers


def pkt(src: str = "198.18.1.10", dst: str = "198.18.2.20", proto: int = 6, sport: int = 40000,
        dport: int = 80, dscp: int = 0) -> PacketInfo:  # fmt: skip
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    return PacketInfo(s.version, int(s), int(d), proto, sport, dport, dscp, 100, False, 0)


def classify(rules: list[tuple[str, Match]], info: PacketInfo, mark: int = 0, iif: str | None = None,
             oif: str | None = None, default: str | None = None) -> str | None:  # fmt: skip
    return Classifier(rules, default).classify(info, mark, iif, oif)


def test_empty_match_matches_everything() -> None:
    assert classify([("all", Match())], pkt()) == "all"
    assert classify([("all", Match())], pkt("2001:db8::1", "2001:db8::2", proto=58, sport=-1, dport=-1)) == "all"


def test_no_match_falls_back_to_default_then_none() -> None:
    rules = [("web", Match(dport=(443, 443)))]
    assert classify(rules, pkt(dport=80), default="bulk") == "bulk"
    assert classify(rules, pkt(dport=80)) is None
    assert classify([], pkt(), default="bulk") == "bulk"
    assert classify([], pkt()) is None


def test_first_match_in_rule_order_wins() -> None:
    rules = [("a", Match(proto=6)), ("b", Match(dport=(80, 80))), ("c", Match())]
    assert classify(rules, pkt(proto=6, dport=80)) == "a"
    assert classify(rules, pkt(proto=17, dport=80)) == "b"
    assert classify(rules, pkt(proto=17, dport=81)) == "c"
    rules.reverse()
    assert classify(rules, pkt(proto=6, dport=80)) == "c"


def test_cidr_v4_and_v6() -> None:
    rules = [("v4", Match(src="198.18.1.0/24")), ("v6", Match(dst="2001:db8:1::/48"))]
    assert classify(rules, pkt(src="198.18.1.255")) == "v4"
    assert classify(rules, pkt(src="198.18.2.1")) is None
    assert classify(rules, pkt(src="2001:db8::9", dst="2001:db8:1:ffff::1")) == "v6"
    assert classify(rules, pkt(src="2001:db8::9", dst="2001:db8:2::1")) is None


def test_v4_cidr_never_matches_v6_packet() -> None:
    # ::c612:10a has the same integer value as 198.18.1.10: only the family tells them apart
    v6 = pkt(src="::c612:10a", dst="::1")
    assert v6.src == int(ipaddress.IPv4Address("198.18.1.10"))
    assert classify([("x", Match(src="198.18.1.0/24"))], v6) is None
    assert classify([("x", Match(src="0.0.0.0/0"))], v6) is None
    assert classify([("x", Match(src="0.0.0.0/0"))], pkt()) == "x"
    assert classify([("x", Match(src="::/0"))], pkt()) is None
    assert classify([("x", Match(src="::/0"))], v6) == "x"


def test_host_route_and_dst() -> None:
    rules = [("h", Match(dst="198.18.2.20/32"))]
    assert classify(rules, pkt(dst="198.18.2.20")) == "h"
    assert classify(rules, pkt(dst="198.18.2.21")) is None


def test_port_ranges_are_inclusive_and_need_ports() -> None:
    rules = [("r", Match(proto=17, sport=(1000, 2000))), ("any-port", Match(dport=(0, 65535)))]
    assert classify(rules, pkt(proto=17, sport=1000, dport=9)) == "r"
    assert classify(rules, pkt(proto=17, sport=2000, dport=9)) == "r"
    assert classify(rules, pkt(proto=17, sport=2001, dport=9)) == "any-port"
    # no ports (ICMP, non-first fragment): even a full range does not match
    assert classify(rules, pkt(proto=1, sport=-1, dport=-1)) is None


def test_dscp_mark_and_interfaces() -> None:
    rules = [
        ("ef", Match(dscp=46)),
        ("marked", Match(mark=(0x10, 0xFF))),
        ("exact-mark", Match(mark=(7, 0xFFFFFFFF))),
        ("from-lan", Match(iif="lan0")),
        ("to-ppp", Match(oif="ppp+")),
    ]
    assert classify(rules, pkt(dscp=46)) == "ef"
    assert classify(rules, pkt(), mark=0x1210) == "marked"
    assert classify(rules, pkt(), mark=0x1211) is None
    assert classify(rules, pkt(), mark=7) == "exact-mark"
    assert classify(rules, pkt(), mark=0x107) is None
    assert classify(rules, pkt(), iif="lan0") == "from-lan"
    assert classify(rules, pkt(), iif="lan01") is None
    assert classify(rules, pkt(), oif="ppp0") == "to-ppp"
    assert classify(rules, pkt(), oif="eth0") is None
    assert classify(rules, pkt(), oif=None) is None


def test_all_fields_of_one_match_must_hold() -> None:
    m = Match(src="198.18.1.0/24", dst="198.18.2.0/24", proto=6, sport=(40000, 40000), dport=(80, 90), dscp=10,
              mark=(1, 1), iif="wan0")  # fmt: skip
    good = pkt(dscp=10)
    assert classify([("m", m)], good, mark=3, iif="wan0") == "m"
    assert m.matches(good, 3, "wan0", None)
    for bad, mark, iif in [
        (pkt(src="198.18.9.1", dscp=10), 3, "wan0"),
        (pkt(dst="198.18.9.1", dscp=10), 3, "wan0"),
        (pkt(proto=17, dscp=10), 3, "wan0"),
        (pkt(sport=40001, dscp=10), 3, "wan0"),
        (pkt(dport=91, dscp=10), 3, "wan0"),
        (pkt(dscp=11), 3, "wan0"),
        (good, 2, "wan0"),
        (good, 3, "wan1"),
    ]:
        assert classify([("m", m)], bad, mark=mark, iif=iif) is None
        assert not m.matches(bad, mark, iif, None)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"src": "198.18.0.0/15", "dst": "2001:db8::/32"},
        {"sport": (10, 5)},
        {"dport": (0, 70000)},
        {"mark": (0x100, 0xFF)},
    ],
)
def test_match_rejects_impossible_matches(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Match(**kwargs)  # type: ignore[arg-type]


def test_classifier_rejects_bad_rules() -> None:
    with pytest.raises(TypeError):
        Classifier([("a", "tcp")], None)  # type: ignore[list-item]


def test_from_config_uses_leaves_of_one_direction_in_order() -> None:
    cfg = parse_config(
        {
            "classes": [
                {"name": "up", "rate": "10mbit"},
                {"name": "voip", "parent": "up", "rate": "1mbit", "match": {"dscp": "ef"}},
                {"name": "web", "parent": "up", "rate": "2mbit", "match": {"proto": "tcp", "dport": 443}},
                {"name": "rest", "parent": "up", "rate": "3mbit", "default": True},
                {"name": "down", "direction": "ingress", "rate": "50mbit"},
                {"name": "dl", "direction": "ingress", "parent": "down", "rate": "5mbit", "match": {}},
            ]
        }
    )
    egress = Classifier.from_config(cfg, "egress")
    assert [name for name, _ in egress.rules] == ["voip", "web"]
    assert egress.default == "rest"
    assert egress.classify(pkt(dscp=46, dport=443), 0, None, "wan0") == "voip"
    assert egress.classify(pkt(dport=443), 0, None, "wan0") == "web"
    assert egress.classify(pkt(dport=80), 0, None, "wan0") == "rest"
    ingress = Classifier.from_config(cfg, "ingress")
    assert ingress.default is None
    assert ingress.classify(pkt(), 0, "wan0", None) == "dl"  # empty match catches everything


# --- the compiled classifier agrees with the interpreted reference -------------------------------

V4_NETS = ["198.18.0.0/15", "198.18.1.0/24", "198.18.1.10/32", "0.0.0.0/0", "10.0.0.0/8"]
V6_NETS = ["2001:db8::/32", "2001:db8:1::/48", "::/0", "::c612:10a/128"]
ADDRS = ["198.18.1.10", "198.18.200.1", "10.1.2.3", "2001:db8:1::5", "2001:db8:2::5", "::c612:10a"]


def _ranges() -> st.SearchStrategy[tuple[int, int] | None]:
    return st.none() | st.tuples(st.integers(0, 100), st.integers(0, 100)).map(lambda t: (min(t), max(t)))


@st.composite
def matches(draw: st.DrawFn) -> Match:
    fam = draw(st.sampled_from([4, 6]))
    nets = V4_NETS if fam == 4 else V6_NETS
    mask = draw(st.sampled_from([0xFF, 0xF0, 0xFFFFFFFF, 0]))
    return Match(
        src=draw(st.none() | st.sampled_from(nets)),
        dst=draw(st.none() | st.sampled_from(nets)),
        proto=draw(st.none() | st.sampled_from([6, 17, 1])),
        sport=draw(_ranges()),
        dport=draw(_ranges()),
        dscp=draw(st.none() | st.integers(0, 3)),
        mark=draw(st.none() | st.integers(0, 255).map(lambda v: (v & mask, mask))),
        iif=draw(st.none() | st.sampled_from(["eth0", "eth+", "ppp0"])),
        oif=draw(st.none() | st.sampled_from(["wan0", "wan+"])),
    )


@st.composite
def packets(draw: st.DrawFn) -> PacketInfo:
    src, dst = draw(st.sampled_from(ADDRS)), draw(st.sampled_from(ADDRS))
    if ipaddress.ip_address(src).version != ipaddress.ip_address(dst).version:
        dst = src
    has_ports = draw(st.booleans())
    sport, dport = (draw(st.integers(0, 100)), draw(st.integers(0, 100))) if has_ports else (-1, -1)
    return pkt(src, dst, draw(st.sampled_from([6, 17, 1])), sport, dport, draw(st.integers(0, 3)))


@settings(max_examples=200)
@given(
    st.lists(matches(), max_size=6),
    packets(),
    st.integers(0, 255),
    st.none() | st.sampled_from(["eth0", "eth1", "ppp0"]),
    st.none() | st.sampled_from(["wan0", "wan1", "lan0"]),
    st.none() | st.just("dflt"),
)
def test_compiled_equals_reference(ms: list[Match], info: PacketInfo, mark: int, iif: str | None,
                                   oif: str | None, default: str | None) -> None:  # fmt: skip
    rules = [(f"c{i}", m) for i, m in enumerate(ms)]
    want = next((name for name, m in rules if m.matches(info, mark, iif, oif)), default)
    assert Classifier(rules, default).classify(info, mark, iif, oif) == want


# --- classify_bytes (raw headers, the worker's path) agrees with parse_headers + classify --------

def _v4_header(draw: st.DrawFn) -> bytes:
    """An IPv4 packet prefix with fields drawn near the edges classify_bytes' fast path tests."""
    src = draw(st.sampled_from(["198.18.1.10", "198.18.200.1", "10.1.2.3"]))
    dst = draw(st.sampled_from(["198.18.1.10", "198.18.200.1", "10.1.2.3"]))
    ihl = draw(st.sampled_from([5, 5, 5, 6, 4]))
    total = draw(st.sampled_from([20, 23, 24, 46, 1500, 19, 0]))
    frag = draw(st.sampled_from([0, 0, 0x2000, 0x0001, 0x4000, 0x0100]))
    proto = draw(st.sampled_from([6, 17, 1, 132, 47]))
    tos = draw(st.integers(0, 255))
    head = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, tos, total, 0, frag, 64, proto, 0,
                       ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed)
    rest = bytes(draw(st.lists(st.integers(0, 100), min_size=0, max_size=12)))
    data = head + b"\0" * max(0, ihl * 4 - 20) + rest
    return data[: draw(st.integers(0, len(data)))] if draw(st.booleans()) else data


@st.composite
def raw_packets(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["v4", "v4", "v6", "junk"]))
    if kind == "v4":
        return _v4_header(draw)
    if kind == "v6":
        src, dst = draw(st.sampled_from(ADDRS[3:])), draw(st.sampled_from(ADDRS[3:]))
        nh = draw(st.sampled_from([6, 17, 58]))
        head = struct.pack("!IHBB16s16s", 6 << 28 | draw(st.integers(0, 255)) << 20, 40, nh, 64,
                           ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed)
        return head + bytes(draw(st.lists(st.integers(0, 100), max_size=8)))
    return draw(st.binary(max_size=60))


@settings(max_examples=400, deadline=None)
@given(st.lists(matches(), max_size=6), raw_packets(), st.integers(0, 255),
       st.none() | st.sampled_from(["eth0", "ppp0"]), st.none() | st.sampled_from(["wan0", "lan0"]),
       st.none() | st.just("dflt"))
def test_classify_bytes_equals_parse_then_classify(ms: list[Match], data: bytes, mark: int, iif: str | None,
                                                   oif: str | None, default: str | None) -> None:
    c = Classifier([(f"c{i}", m) for i, m in enumerate(ms)], default)
    try:
        info = parse_headers(data)
    except MalformedPacket:
        with pytest.raises(MalformedPacket):
            c.classify_bytes(data, mark, iif, oif)
        return
    assert c.classify_bytes(data, mark, iif, oif) == (info.length, c.classify(info, mark, iif, oif))
    pkt = _Pkt(mark, 1 if iif else 0, 2 if oif else 0)
    assert c.classify_packet(pkt, data, {0: None, 1: iif, 2: oif}) == c.classify_bytes(data, mark, iif, oif)


class _Pkt:
    """What classify_packet reads of a netfilterqueue packet."""

    def __init__(self, mark: int, indev: int, outdev: int) -> None:
        self.mark, self.indev, self.outdev = mark, indev, outdev

    def get_mark(self) -> int:
        return self.mark


def test_classify_bytes_reads_ports_of_an_ipv4_packet() -> None:
    c = Classifier([("web", Match(proto=6, dport=(443, 443), src="198.18.0.0/15")), ("dns", Match(dport=(53, 53)))],
                   "rest")
    web = bytes(IP(src="198.18.1.2", dst="198.19.0.1") / TCP(dport=443))
    dns = bytes(IP(src="10.0.0.1", dst="198.19.0.1") / UDP(dport=53) / b"q")
    frag = bytes(IP(src="198.18.1.2", dst="198.19.0.1", proto=6, frag=10) / (b"\x01\xbb" * 4))  # later fragment: no ports
    assert c.classify_bytes(web, 0, None, None) == (40, "web")
    assert c.classify_bytes(dns, 0, None, None) == (29, "dns")
    assert c.classify_bytes(frag, 0, None, None)[1] == "rest"


# --- Match reads CIDRs with inet_pton when it can: the same as ipaddress ---------------------------

@st.composite
def cidr_texts(draw: st.DrawFn) -> str:
    """CIDR-ish strings: valid and invalid addresses of both families, odd prefix spellings."""
    kind = draw(st.sampled_from(["v4", "v6", "junk"]))
    if kind == "v4":
        parts = [str(draw(st.integers(0, 300))) for _ in range(draw(st.sampled_from([4, 4, 4, 3, 5])))]
        if draw(st.integers(0, 5)) == 0:
            parts[0] = "0" + parts[0]
        addr = ".".join(parts)
    elif kind == "v6":
        a = ipaddress.IPv6Address(draw(st.integers(0, 2**128 - 1)))
        mapped = f"::ffff:{draw(st.integers(0, 255))}.1.2.3"
        addr = draw(st.sampled_from([a.compressed, a.exploded, a.compressed.upper(), mapped, a.compressed + "%eth0",
                                     a.compressed + ":1"]))  # fmt: skip
    else:
        addr = draw(st.text("0123456789abcdef.:%/ x", max_size=20))
    suffix = draw(st.sampled_from(["", "/", "/0", "/8", "/24", "/32", "/33", "/64", "/128", "/129", "/024", "/-1",
                                   "/255.255.255.0", "/0.0.0.255", "/ 8", "/٣"]))
    return addr + suffix


@settings(max_examples=600)
@given(cidr_texts())
def test_match_reads_cidrs_as_ipaddress_does(text: str) -> None:
    try:
        n = ipaddress.ip_network(text, strict=False)
    except ValueError:
        with pytest.raises(ValueError):
            Match(dst=text)
        return
    m = Match(dst=text)
    assert (m.family, m.dst_net, m.dst_mask) == (n.version, int(n.network_address), int(n.netmask))
