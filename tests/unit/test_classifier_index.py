"""The address-indexed classifier (imqd.classifier.Classifier) and its updates, held to Match.matches first-match.

The reference answer is the plain interpreted one: the rules sorted by order, the first whose
``Match.matches`` holds, else the default.  The indexed classifier, the linear one (LinearClassifier) and a
classifier built fresh from the final rules must all give it, over random rule sets with overlapping prefixes
of both families, port ranges, catch-alls and defaults, and over random sequences of updates.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imqd.classifier import MAX_LINEAR_RULES, ORDER_STRIDE, Classifier, LinearClassifier, Match
from imqd.config import parse_config
from imqd.packet import MalformedPacket, PacketInfo, parse_headers

Rule = tuple[str, Match, int]

# Addresses near each other so that prefixes of many lengths overlap; ::c612:10a has the integer value of
# 198.18.1.10 (only the family tells them apart).
V4_ADDRS = ["198.18.1.10", "198.18.1.11", "198.18.1.200", "198.18.77.1", "198.19.1.10", "10.0.0.1", "0.0.0.1"]
V6_ADDRS = ["2001:db8::1", "2001:db8::2", "2001:db8:0:1::1", "2001:db8:ff::1", "2001:db9::1", "::c612:10a"]
V4_LENS = [0, 1, 7, 8, 15, 16, 23, 24, 25, 31, 32]
V6_LENS = [0, 1, 32, 48, 63, 64, 65, 127, 128]
NAMES = [f"c{i}" for i in range(14)]


def _ranges() -> st.SearchStrategy[tuple[int, int] | None]:
    return st.none() | st.tuples(st.integers(0, 60), st.integers(0, 60)).map(lambda t: (min(t), max(t)))


@st.composite
def prefixes(draw: st.DrawFn, family: int) -> str:
    addr = draw(st.sampled_from(V4_ADDRS if family == 4 else V6_ADDRS))
    plen = draw(st.sampled_from(V4_LENS if family == 4 else V6_LENS))
    return str(ipaddress.ip_network(f"{addr}/{plen}", strict=False))


@st.composite
def matches(draw: st.DrawFn) -> Match:
    """Mostly address rules (the index's case), with and without further tests, and some without addresses."""
    fam = draw(st.sampled_from([4, 6]))
    kind = draw(st.sampled_from(["dst", "dst", "src", "both", "extra", "none"]))
    src = draw(prefixes(fam)) if kind in ("src", "both") or (kind == "extra" and draw(st.booleans())) else None
    dst = draw(prefixes(fam)) if kind in ("dst", "both") or (kind == "extra" and src is None) else None
    extra = kind in ("extra", "none") or draw(st.integers(0, 4)) == 0
    if not extra:
        return Match(src=src, dst=dst)
    mask = draw(st.sampled_from([0xFF, 0xF0, 0xFFFFFFFF]))
    return Match(
        src=src, dst=dst,
        proto=draw(st.none() | st.sampled_from([6, 17, 1])),
        sport=draw(_ranges()), dport=draw(_ranges()),
        dscp=draw(st.none() | st.integers(0, 2)),
        mark=draw(st.none() | st.integers(0, 3).map(lambda v: (v & mask, mask))),
        iif=draw(st.none() | st.sampled_from(["eth0", "eth+"])),
        oif=draw(st.none() | st.sampled_from(["wan0", "wan+"])),
    )  # fmt: skip


def _near(draw: st.DrawFn, addr: str) -> str:
    """``addr`` or an address a few bits away from it (inside some of its prefixes, outside others)."""
    a = ipaddress.ip_address(addr)
    width = 32 if a.version == 4 else 128
    flip = draw(st.sampled_from([None, 0, 1, 7, 8, 16, 24, width - 1]))
    return str(a) if flip is None else str(ipaddress.ip_address(int(a) ^ (1 << flip)))


@st.composite
def raw_packets(draw: st.DrawFn) -> bytes:
    """An IPv4 (sometimes with options, so it takes the parse_headers path) or IPv6 packet with ports."""
    fam = draw(st.sampled_from([4, 4, 6]))
    pool = V4_ADDRS if fam == 4 else V6_ADDRS
    src, dst = _near(draw, draw(st.sampled_from(pool))), _near(draw, draw(st.sampled_from(pool)))
    proto = draw(st.sampled_from([6, 17, 1]))
    l4 = struct.pack("!HH", draw(st.integers(0, 60)), draw(st.integers(0, 60))) + bytes(4)
    tos = draw(st.integers(0, 2)) << 2
    if fam == 4:
        opts = b"\x01" * 4 if draw(st.integers(0, 4)) == 0 else b""
        head = struct.pack("!BBHHHBBH4s4s", 0x45 + len(opts) // 4, tos, 20 + len(opts) + len(l4), 0, 0, 64, proto,
                           0, ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed)  # fmt: skip
        return head + opts + l4
    return struct.pack("!IHBB16s16s", 6 << 28 | tos << 20, len(l4), proto, 64, ipaddress.ip_address(src).packed,
                       ipaddress.ip_address(dst).packed) + l4  # fmt: skip


METAS = st.tuples(st.integers(0, 3), st.none() | st.sampled_from(["eth0", "eth1", "ppp0"]),
                  st.none() | st.sampled_from(["wan0", "wan1"]))  # fmt: skip


def reference(rules: dict[str, tuple[Match, int]], default: str | None, info: PacketInfo, mark: int,
              iif: str | None, oif: str | None) -> str | None:  # fmt: skip
    """First match by order with the interpreted test."""
    for name, (m, _) in sorted(rules.items(), key=lambda kv: kv[1][1]):
        if m.matches(info, mark, iif, oif):
            return name
    return default


def assert_agrees(c: Classifier, rules: dict[str, tuple[Match, int]], default: str | None,
                  packets: list[tuple[bytes, tuple[int, str | None, str | None]]]) -> None:  # fmt: skip
    for data, (mark, iif, oif) in packets:
        info = parse_headers(data)
        want = reference(rules, default, info, mark, iif, oif)
        assert c.classify(info, mark, iif, oif) == want
        for _ in range(2):  # the second may come from the exact-address cache
            assert c.classify_bytes(data, mark, iif, oif) == (info.length, want)


def build(kind: type[Classifier], rules: dict[str, tuple[Match, int]], default: str | None) -> Classifier:
    c = kind([], None)
    c.update(add=[(name, m, order) for name, (m, order) in rules.items()], default=default)
    return c


@settings(max_examples=400, deadline=None)
@given(st.lists(matches(), max_size=12), st.lists(st.tuples(raw_packets(), METAS), min_size=1, max_size=8),
       st.none() | st.just("dflt"), st.booleans())
def test_indexed_equals_first_match_reference(ms: list[Match], packets: list[tuple[bytes, Any]],
                                              default: str | None, catch_all: bool) -> None:  # fmt: skip
    if catch_all:
        ms = [*ms[: len(ms) // 2], Match(), *ms[len(ms) // 2 :]]
    rules = {f"c{i}": (m, i) for i, m in enumerate(ms)}
    c = Classifier([(f"c{i}", m) for i, m in enumerate(ms)], default)
    assert_agrees(c, rules, default, packets)
    assert_agrees(LinearClassifier([(f"c{i}", m) for i, m in enumerate(ms)], default), rules, default, packets)


@st.composite
def plain_matches(draw: st.DrawFn, fields: tuple[str, ...]) -> Match:
    """A subscriber's rule: one address prefix, nothing else (what the exact-address cache serves)."""
    net = draw(prefixes(draw(st.sampled_from([4, 4, 6]))))
    return Match(src=net) if draw(st.sampled_from(fields)) == "src" else Match(dst=net)


@st.composite
def updates(draw: st.DrawFn, rules: dict[str, tuple[Match, int]], new_rules: st.SearchStrategy[Match]
            ) -> dict[str, Any]:  # fmt: skip
    """One update of ``rules``: some of them to remove, some rules to add, maybe a new default.  Mostly
    valid; about one in five is invalid on purpose (an unknown or repeated name, a taken order)."""
    present = sorted(rules)
    remove = draw(st.lists(st.sampled_from(present), max_size=3, unique=True)) if present else []
    add = draw(st.lists(st.tuples(st.sampled_from(NAMES), new_rules, st.integers(0, 300)), max_size=4,
                        unique_by=lambda r: r[0]))  # fmt: skip
    spoil = draw(st.integers(0, 9))
    if spoil == 0:
        remove.append(draw(st.sampled_from(NAMES)))  # unknown, or removed twice
    elif spoil == 1 and add and rules:
        name, m, _ = add[0]
        add[0] = (name, m, rules[draw(st.sampled_from(present))][1])  # maybe taken
    return {"remove": remove, "add": add, "default": draw(st.sampled_from(["keep", None, "dflt", "other"]))}


def model_update(rules: dict[str, tuple[Match, int]], op: dict[str, Any]) -> dict[str, tuple[Match, int]] | None:
    """What the rules become after ``op``, or None when the classifier must refuse it."""
    remove, add = op["remove"], op["add"]
    if len(set(remove)) != len(remove) or any(n not in rules for n in remove):
        return None
    names = [n for n, _, _ in add]
    orders = [o for _, _, o in add]
    if len(set(names)) != len(names) or len(set(orders)) != len(orders):
        return None
    new = {n: r for n, r in rules.items() if n not in remove and n not in names}
    if any(o == order for _, o in new.values() for order in orders):
        return None
    new.update({n: (m, o) for n, m, o in add})
    return new


@settings(max_examples=250, deadline=None)
@given(st.data(), st.sampled_from(["any", "dst", "src+dst"]), st.integers(1, 10),
       st.lists(st.tuples(raw_packets(), METAS), min_size=1, max_size=6))
def test_updates_equal_a_fresh_build_and_the_reference(data: st.DataObject, kind: str, steps: int,
                                                       packets: list[Any]) -> None:  # fmt: skip
    """Random updates agree with the reference after every step.  ``dst``/``src+dst``: subscriber rules only
    (many prefix lengths; with ``dst`` the exact-address cache).  The packets repeat across steps, so a stale
    cached answer would show."""
    new_rules = matches() if kind == "any" else plain_matches(("dst",) if kind == "dst" else ("src", "dst"))
    rules: dict[str, tuple[Match, int]] = {}
    default: str | None = None
    c, lin = Classifier([], None), LinearClassifier([], None)
    entry = c.classify_packet  # bound once, as the worker's DirectionTree does
    for _ in range(steps):
        op = data.draw(updates(rules, new_rules))
        want = model_update(rules, op)
        kwargs: dict[str, Any] = {"remove": op["remove"], "add": op["add"]}
        if op["default"] != "keep":
            kwargs["default"] = op["default"]
        if want is None:
            before = (c.rules, c.default, c.source)
            with pytest.raises(ValueError):
                c.update(**kwargs)
            with pytest.raises(ValueError):
                lin.update(**kwargs)
            assert (c.rules, c.default, c.source) == before  # nothing changed
        else:
            c.update(**kwargs)
            lin.update(**kwargs)
            rules = want
            default = kwargs.get("default", default)
        assert c.classify_packet is entry
        assert c.rules == tuple((n, m) for n, (m, _) in sorted(rules.items(), key=lambda kv: kv[1][1]))
        assert_agrees(c, rules, default, packets)
        assert_agrees(lin, rules, default, packets)
    fresh = build(Classifier, rules, default)
    assert fresh.source == c.source  # the updated code is what a fresh build generates
    assert_agrees(fresh, rules, default, packets)


def _udp(dst: str, src: str = "198.18.255.1", dport: int = 53) -> bytes:
    return struct.pack("!BBHHHBBH4s4sHHHH", 0x45, 0, 28, 0, 0, 64, 17, 0, ipaddress.ip_address(src).packed,
                       ipaddress.ip_address(dst).packed, 40000, dport, 8, 0)  # fmt: skip


def _cls(c: Classifier, dst: str, **kw: Any) -> str | None:
    return c.classify_bytes(_udp(dst, **kw), 0, None, None)[1]


def test_first_match_not_longest_match() -> None:
    wide_first = Classifier([("net", Match(dst="198.18.1.0/24")), ("host", Match(dst="198.18.1.10/32"))], None)
    assert _cls(wide_first, "198.18.1.10") == "net"
    host_first = Classifier([("host", Match(dst="198.18.1.10/32")), ("net", Match(dst="198.18.1.0/24"))], None)
    assert _cls(host_first, "198.18.1.10") == "host"
    assert _cls(host_first, "198.18.1.11") == "net"
    assert _cls(host_first, "198.18.2.10") is None


def test_rules_sharing_an_address_keep_their_order() -> None:
    c = Classifier([("voip", Match(dst="198.18.1.10/32", proto=17, dport=(5000, 5100))),
                    ("sub", Match(dst="198.18.1.10/32")),
                    ("never", Match(dst="198.18.1.10/32", dport=(53, 53)))], "rest")  # fmt: skip
    assert _cls(c, "198.18.1.10", dport=5050) == "voip"
    assert _cls(c, "198.18.1.10", dport=53) == "sub"
    assert _cls(c, "198.18.1.11", dport=53) == "rest"
    c.update(remove=["sub"])
    assert _cls(c, "198.18.1.10", dport=53) == "never"
    assert _cls(c, "198.18.1.10", dport=54) == "rest"
    c.update(add=[("sub", Match(dst="198.18.1.10/32"), 1)])
    assert _cls(c, "198.18.1.10", dport=53) == "sub"


def test_an_unindexed_rule_between_indexed_ones() -> None:
    c = Classifier([("a", Match(dst="198.18.1.0/24")), ("dns", Match(dport=(53, 53))),
                    ("b", Match(dst="198.18.2.0/24"))], None)  # fmt: skip
    assert _cls(c, "198.18.1.1") == "a"
    assert _cls(c, "198.18.2.1") == "dns"
    assert _cls(c, "198.18.2.1", dport=80) == "b"
    assert _cls(c, "198.18.3.1") == "dns"


def test_ten_thousand_subscribers_generate_code_of_constant_size() -> None:
    hosts = [(f"sub{i}", Match(dst=f"{ipaddress.IPv4Address(0xC6120000 + 1 + i)}/32")) for i in range(10_000)]
    c = Classifier(hosts, "rest")
    one = Classifier(hosts[:1], "rest")
    assert len(c.source) == len(one.source) < 1_000  # one probe, not 10,000 ifs
    assert _cls(c, "198.18.39.16") == "sub9999"
    assert _cls(c, "198.18.0.1") == "sub0"
    assert _cls(c, "198.19.0.1") == "rest"


def test_an_indexed_change_keeps_the_code_and_reaches_a_bound_entry() -> None:
    c = Classifier([("a", Match(dst="198.18.1.1/32")), ("b", Match(dst="198.18.1.2/32"))], None)
    entry, code = c.classify_packet, c.classify_packet.__code__
    c.update(remove=["a"], add=[("c", Match(dst="198.18.1.3/32"), 5), ("b", Match(dst="198.18.1.4/32"), 1)])
    assert c.classify_packet is entry and entry.__code__ is code  # a dict change, nothing compiled
    data = [_udp(f"198.18.1.{i}") for i in (1, 2, 3, 4)]
    assert [entry(_Pkt(), d, {})[1] for d in data] == [None, None, "c", "b"]
    c.update(add=[("net", Match(dst="198.18.0.0/16"), 0)])  # a new prefix length: new code, same function
    assert c.classify_packet is entry and entry.__code__ is not code
    assert [entry(_Pkt(), d, {})[1] for d in data] == ["net"] * 4


def test_emptied_and_refilled_table_in_one_update() -> None:
    c = Classifier([("a", Match(dst="198.18.1.1/32"))], None)
    c.update(remove=["a"], add=[("b", Match(dst="198.18.1.2/32"), 0)])
    assert _cls(c, "198.18.1.2") == "b"
    assert _cls(c, "198.18.1.1") is None


def test_the_exact_address_cache_serves_many_lengths_and_forgets_on_change() -> None:
    rules = [("a", Match(dst="198.18.0.0/16")), ("b", Match(dst="198.18.1.0/24")), ("c", Match(dst="198.18.1.10/32"))]
    assert "_cached4" not in Classifier(rules[1:], None).source  # two probes: no cache
    c = Classifier(rules[::-1], None)
    assert "_cached4" in c.source and "_cached6" not in c.source
    assert [_cls(c, "198.18.1.10") for _ in range(2)] == ["c", "c"]
    c.update(remove=["c"])  # back to two tables: the cache goes
    assert "_cached4" not in c.source and _cls(c, "198.18.1.10") == "b"
    c.update(add=[("c", Match(dst="198.18.1.10/32"), 0)])
    assert _cls(c, "198.18.1.10") == "c"
    c.update(add=[("d", Match(dst="198.18.1.10/32"), 9)])  # a dict change only: the cached answer must go
    c.update(remove=["c"])
    assert _cls(c, "198.18.1.10") == "b"
    c.update(add=[("b", Match(dst="198.18.1.0/24"), 10)], default="rest")  # a (order 2) comes first now
    assert _cls(c, "198.18.1.10") == "a" and _cls(c, "198.19.0.1") == "rest"
    c.update(remove=["a"])
    assert _cls(c, "198.18.1.10") == "d" and _cls(c, "198.18.1.11") == "b" and _cls(c, "198.18.2.1") == "rest"
    c.update(default=None)
    assert _cls(c, "198.19.0.1") is None


class _Pkt:
    indev = outdev = 0

    def get_mark(self) -> int:
        return 0


def test_v4_rules_never_match_v6_packets_with_the_same_integer() -> None:
    c = Classifier([("v4", Match(dst="198.18.1.10/32")), ("v4net", Match(src="198.18.0.0/15"))], None)
    v6 = struct.pack("!IHBB16s16s", 6 << 28, 8, 17, 64, ipaddress.ip_address("::c612:10a").packed,
                     ipaddress.ip_address("::c612:10a").packed) + bytes(8)  # fmt: skip
    assert c.classify_bytes(v6, 0, None, None) == (48, None)
    c.update(add=[("v6", Match(dst="::c612:10a/128"), 2)])
    assert c.classify_bytes(v6, 0, None, None) == (48, "v6")
    assert _cls(c, "198.18.1.10") == "v4"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"remove": ["nope"]}, "class 'nope' has no rule to remove"),
        ({"remove": ["a", "a"]}, "class 'a' is removed twice"),
        ({"add": [("x", Match(), 0)]}, "class 'x': order 0 is taken by class 'a'"),
        ({"add": [("x", Match(), 7), ("y", Match(), 7)]}, "class 'y': order 7 is also given to class 'x'"),
        ({"add": [("x", Match(), 7), ("x", Match(), 8)]}, "class 'x' is added twice"),
        ({"add": [("x", Match(), -1)]}, "class 'x': order must be an int"),
        ({"add": [("x", Match(), 2**62)]}, "class 'x': order must be an int"),
        ({"add": [("x", Match(), True)]}, "class 'x': order must be an int"),
        ({"add": [("x", Match(), 9)], "remove": ["zz"]}, "class 'zz' has no rule to remove"),
    ],
)
def test_a_bad_update_names_the_class_and_changes_nothing(kwargs: dict[str, Any], message: str) -> None:
    c = Classifier([("a", Match(dst="198.18.1.1/32")), ("b", Match(dport=(53, 53)))], "rest")
    before = (c.rules, c.default, c.source)
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        c.update(**kwargs)
    assert (c.rules, c.default, c.source) == before
    assert _cls(c, "198.18.1.1") == "a" and _cls(c, "198.18.1.2") == "b" and _cls(c, "198.18.1.2", dport=1) == "rest"


@pytest.mark.parametrize(
    "kwargs",
    [{"add": [("x", "tcp", 3)]}, {"add": [(1, Match(), 3)]}, {"add": [("x", Match())]}, {"remove": [None]},
     {"default": 5}],
)
def test_wrong_types_are_refused(kwargs: dict[str, Any]) -> None:
    c = Classifier([("a", Match(dst="198.18.1.1/32"))], None)
    with pytest.raises(TypeError):
        c.update(**kwargs)
    assert c.rules == (("a", Match(dst="198.18.1.1/32")),)


def test_replacing_a_rule_may_reuse_its_order_or_take_a_freed_one() -> None:
    c = Classifier([("a", Match(dst="198.18.1.1/32")), ("b", Match(dst="198.18.1.0/24"))], None)
    c.update(add=[("a", Match(dst="198.18.1.2/32"), 0)])
    assert _cls(c, "198.18.1.1") == "b" and _cls(c, "198.18.1.2") == "a"
    c.update(remove=["a"], add=[("b", Match(dst="198.18.1.0/24"), 0), ("c", Match(dst="198.18.1.2/32"), 1)])
    assert c.rules == (("b", Match(dst="198.18.1.0/24")), ("c", Match(dst="198.18.1.2/32")))
    assert _cls(c, "198.18.1.2") == "b"
    c.update(add=[("b", Match(dst="198.18.1.0/24"), 1), ("c", Match(dst="198.18.1.2/32"), 0)])  # swap orders
    assert _cls(c, "198.18.1.2") == "c"
    c.update(remove=["b", "c"])
    assert len(c) == 0 and _cls(c, "198.18.1.2") is None


def test_too_many_unindexed_rules_are_refused_naming_the_class() -> None:
    ports = [(f"p{i}", Match(dport=(i, i))) for i in range(MAX_LINEAR_RULES)]
    c = Classifier(ports, None)
    with pytest.raises(ValueError, match=f"class 'one-more': more than {MAX_LINEAR_RULES} rules without a src or dst"):
        c.update(add=[("one-more", Match(proto=6), MAX_LINEAR_RULES)])
    c.update(add=[("host", Match(dst="198.18.1.1/32"), MAX_LINEAR_RULES)])  # an indexed rule is fine
    c.update(remove=["p0"], add=[("one-more", Match(proto=6), MAX_LINEAR_RULES + 1)])  # so is one replacing one
    assert len(c) == MAX_LINEAR_RULES + 1
    with pytest.raises(ValueError, match="class 'x': more than"):
        Classifier([*ports, ("x", Match())], None)


def test_too_many_rules_are_refused_naming_the_class(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("imqd.classifier.MAX_RULES", 3)
    hosts = [(f"h{i}", Match(dst=f"198.18.1.{i}/32"), i) for i in range(4)]
    c = Classifier([], None)
    with pytest.raises(ValueError, match="class 'h3': more than 3 rules in one classifier"):
        c.update(add=hosts)
    assert len(c) == 0
    c.update(add=hosts[:3])
    c.update(remove=["h0"], add=[hosts[3], ("h1", Match(dst="198.18.2.1/32"), 1)])  # 3 - 1 + 1, h1 replaced
    assert [n for n, _ in c.rules] == ["h1", "h2", "h3"]


def test_from_config_orders_classes_by_their_position() -> None:
    cfg = parse_config(
        {
            "classes": [
                {"name": "down", "direction": "ingress", "rate": "100mbit"},
                {"name": "up", "rate": "10mbit"},
                {"name": "net", "parent": "down", "direction": "ingress", "rate": "1mbit",
                 "match": {"dst": "198.18.0.0/16"}},
                {"name": "u1", "parent": "up", "rate": "1mbit", "match": {"src": "198.18.1.1"}},
                {"name": "host", "parent": "down", "direction": "ingress", "rate": "1mbit",
                 "match": {"dst": "198.18.1.1"}},
            ]
        }
    )  # fmt: skip
    ingress = Classifier.from_config(cfg, "ingress")
    assert [ingress.order(n) for n, _ in ingress.rules] == [2 * ORDER_STRIDE, 4 * ORDER_STRIDE]
    assert _cls(ingress, "198.18.1.1") == "net"
    ingress.update(remove=["net"])
    assert _cls(ingress, "198.18.1.1") == "host"
    egress = Classifier.from_config(cfg, "egress")
    assert egress.classify_bytes(_udp("198.19.0.1", src="198.18.1.1"), 0, None, None)[1] == "u1"


def test_malformed_packets_still_raise() -> None:
    c = Classifier([("a", Match(dst="198.18.1.1/32"))], None)
    for junk in (b"", b"\x45" * 10, b"\x70" + bytes(40)):
        with pytest.raises(MalformedPacket):
            c.classify_bytes(junk, 0, None, None)


# -- a class with several addresses (a subscriber's devices): alternatives of one rule --------------------------
def reference_alternatives(rules: dict[str, tuple[tuple[Match, ...], int]], default: str | None, info: PacketInfo,
                           mark: int, iif: str | None, oif: str | None) -> str | None:  # fmt: skip
    """First class by order any of whose alternatives matches (interpreted)."""
    for name, (alts, _) in sorted(rules.items(), key=lambda kv: kv[1][1]):
        if any(m.matches(info, mark, iif, oif) for m in alts):
            return name
    return default


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(matches(), min_size=1, max_size=4), max_size=8),
       st.lists(st.tuples(raw_packets(), METAS), min_size=1, max_size=8), st.none() | st.just("dflt"), st.data())
def test_a_class_with_several_matches_is_found_by_any_of_them(alts: list[list[Match]], packets: list[Any],
                                                             default: str | None, data: st.DataObject) -> None:
    rules = {f"c{i}": (tuple(ms), i) for i, ms in enumerate(alts)}
    for kind in (Classifier, LinearClassifier):
        c = kind([], None)
        c.update(add=[(n, ms if len(ms) > 1 else ms[0], o) for n, (ms, o) in rules.items()], default=default)
        for data_bytes, (mark, iif, oif) in packets:
            info = parse_headers(data_bytes)
            want = reference_alternatives(rules, default, info, mark, iif, oif)
            assert c.classify(info, mark, iif, oif) == want
            assert c.classify_bytes(data_bytes, mark, iif, oif) == (info.length, want)
        if rules:  # dropping one class's alternatives leaves none of them behind, in the index or the code
            gone = data.draw(st.sampled_from(sorted(rules)))
            c.update(remove=[gone])
            rest = {n: r for n, r in rules.items() if n != gone}
            for data_bytes, (mark, iif, oif) in packets:
                info = parse_headers(data_bytes)
                assert c.classify(info, mark, iif, oif) == reference_alternatives(rest, default, info, mark, iif, oif)


def test_from_config_gives_a_class_listing_several_devices_one_rule_per_address() -> None:
    config = parse_config({"classes": [
        {"name": "alice", "direction": "ingress", "rate": "10mbit", "match": {"dst": ["198.18.20.1", "198.18.21.0/24",
                                                                                      "2001:db8:20::/56"]}},
        {"name": "bob", "direction": "ingress", "rate": "10mbit", "match": {"dst": "198.18.21.7"}},
    ]})
    c = Classifier.from_config(config, "ingress")
    assert _cls(c, "198.18.20.1") == "alice" and _cls(c, "198.18.21.7") == "alice", "alice comes first"
    assert [n for n, _ in c.rules] == ["alice", "alice", "alice", "bob"] and len(c) == 2
    c.update(remove=["alice"])
    assert _cls(c, "198.18.20.1") is None and _cls(c, "198.18.21.7") == "bob"
    with pytest.raises(TypeError, match="tuple of Matches"):
        c.update(add=[("x", (), 7)])
