"""Subscribers from a LibreQoS ShapedDevices.csv (imqd.subscribers): rows, circuits, classes, re-imports."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from scapy.all import IP, TCP, IPv6

from imqd.classifier import Classifier
from imqd.config import Config, ConfigError, parse_config
from imqd.subscribers import class_names, imported_config, read_circuits

HEADER = ("Circuit ID,Circuit Name,Device ID,Device Name,Parent Node,MAC,IPv4,IPv6,Download Min Mbps,"
          "Upload Min Mbps,Download Max Mbps,Upload Max Mbps,Comment")
TREE = parse_config({"classes": [
    {"name": "site1-down", "direction": "ingress", "rate": "1gbit"},
    {"name": "site1-up", "direction": "egress", "rate": "1gbit"},
    {"name": "site2-down", "direction": "ingress", "rate": "1gbit"},
    {"name": "site2-up", "direction": "egress", "rate": "1gbit"},
    {"name": "voip", "direction": "egress", "rate": "1mbit", "match": {"proto": "udp", "dport": 5060}},
]})


def table(*rows: str, header: str = HEADER) -> str:
    return "\n".join([header, *rows]) + "\n"


def row(cid: str = "c1", ipv4: str = "198.18.20.1", ipv6: str = "", parent: str = "site1",
        rates: tuple[str, str, str, str] = ("10", "5", "100", "20"), device: str = "d") -> str:
    quoted = [f'"{v}"' if "," in v else v for v in (ipv4, ipv6)]
    return ",".join([cid, f"Circuit {cid}", device, "router", parent, "", *quoted, *rates, ""])


def errors(text: str, config: Config = TREE) -> list[tuple[Any, ...]]:
    with pytest.raises(ConfigError) as ei:
        imported_config(config, read_circuits(text))
    return [tuple(e["loc"]) for e in ei.value.errors]


def messages(text: str) -> list[str]:
    with pytest.raises(ConfigError) as ei:
        read_circuits(text)
    return [e["msg"] for e in ei.value.errors]


def test_one_download_and_one_upload_class_per_circuit() -> None:
    text = table(row("c1", ipv4="198.18.20.1, 198.18.21.0/30", ipv6="2001:db8:20::/56", device="d1"),
                 row("c1", ipv4="198.18.20.9", device="d2"),  # a second device of the same circuit
                 row("c2", ipv4="198.18.22.5", rates=("0.5", "0.25", "2.5", "1.5")),
                 row("c3", ipv4="", ipv6="2001:db8:30::1", parent="site2"))
    circuits = read_circuits(text)
    assert [(c.id, c.line, c.devices) for c in circuits] == [("c1", 2, 2), ("c2", 4, 1), ("c3", 5, 1)]
    cfg = imported_config(TREE, circuits)
    down = cfg.class_by_name("sub-c1-down")
    assert (down.direction, down.parent, down.rate, down.ceil) == ("ingress", "site1-down", 10_000_000, 100_000_000)
    assert down.match.dst == ("198.18.20.1/32", "198.18.21.0/30", "2001:db8:20::/56", "198.18.20.9/32")
    up = cfg.class_by_name("sub-c1-up")
    assert (up.direction, up.parent, up.rate, up.ceil) == ("egress", "site1-up", 5_000_000, 20_000_000)
    assert up.match.src == down.match.dst and up.match.dst is None
    c2 = cfg.class_by_name("sub-c2-down")
    assert (c2.rate, c2.ceil, c2.match.dst) == (500_000, 2_500_000, "198.18.22.5/32")
    assert cfg.class_by_name("sub-c3-up").parent == "site2-up"
    assert [c.name for c in cfg.classes][:5] == [c.name for c in TREE.classes], "hand-made classes come first"


def test_download_classifies_by_destination_and_upload_by_source() -> None:
    cfg = imported_config(TREE, read_circuits(table(
        row("c1", ipv4="198.18.20.1", ipv6="2001:db8:20::/56"), row("c2", ipv4="198.18.20.2"))))
    down, up = Classifier.from_config(cfg, "ingress"), Classifier.from_config(cfg, "egress")
    to_c1 = bytes(IP(src="203.0.113.9", dst="198.18.20.1") / TCP())
    to_c1_v6 = bytes(IPv6(src="2001:db8:ff::1", dst="2001:db8:20:0:1::7") / TCP())
    from_c2 = bytes(IP(src="198.18.20.2", dst="203.0.113.9") / TCP())
    assert down.classify_bytes(to_c1, 0, None, None)[1] == "sub-c1-down"
    assert down.classify_bytes(to_c1_v6, 0, None, None)[1] == "sub-c1-down"
    assert up.classify_bytes(from_c2, 0, None, None)[1] == "sub-c2-up"
    assert down.classify_bytes(from_c2, 0, None, None)[1] is None, "a download class never takes an upload"


def test_every_bad_row_is_named_by_line_and_column() -> None:
    text = "\n".join([
        "# exported from the CRM",
        HEADER,
        row("ok1", ipv4="198.18.20.1"),
        "",
        row("bad1", rates=("x", "5", "100", "20")),  # line 5
        row("bad2", rates=("50", "5", "10", "20")),  # line 6: min above max
        row("bad3", ipv4="198.18.20.300"),  # line 7
        row("bad4", ipv4="2001:db8::1"),  # line 8: v6 in the v4 column
        row("bad5", ipv4="198.18.20.1/24"),  # line 9: host bits set
        row("", ipv4="198.18.20.9"),  # line 10: no circuit
        "short,row",  # line 11
        row("bad6", rates=("0", "5", "100", "-1")),  # line 12
        '"multi\nline",x,d,n,site1,,198.18.30.1,,1,1,2,2,',  # lines 13-14: a quoted field over two lines
        row("bad7", rates=("10", "5", "nan", "20")),  # line 15
    ]) + "\n"
    locs = errors(text)
    assert locs == [("csv", 5, "Download Min Mbps"), ("csv", 6, "Download Min Mbps"), ("csv", 7, "IPv4"),
                    ("csv", 8, "IPv4"), ("csv", 9, "IPv4"), ("csv", 10, "Circuit ID"), ("csv", 11, "Device ID"),
                    ("csv", 12, "Download Min Mbps"), ("csv", 12, "Upload Max Mbps"),
                    ("csv", 15, "Download Max Mbps")]
    msgs = messages(text)
    assert "'x' is not a number of Mbps" in msgs[0] and "50 is above Download Max Mbps 10" in msgs[1]
    assert "belongs in the IPv6 column" in msgs[3] and "has host bits set" in msgs[4]


def test_a_missing_column_is_named_at_the_header() -> None:
    assert errors(table(row(), header=HEADER.replace(",Upload Max Mbps", ""))) == [("csv", 1, "Upload Max Mbps")]


def test_columns_are_found_by_name_in_any_order_and_extra_ones_ignored() -> None:
    header = ("Circuit ID,Parent Node,Parent Node ID,IPv6,IPv4,Upload Max Mbps,Download Max Mbps,"
              "Upload Min Mbps,download min mbps,sqm")
    cfg = imported_config(TREE, read_circuits(table("c9,site1,x,,198.18.20.9,20,100,5,10,cake", header=header)))
    c9 = cfg.class_by_name("sub-c9-down")
    assert (c9.rate, c9.ceil, c9.match.dst) == (10_000_000, 100_000_000, "198.18.20.9/32")
    assert read_circuits("\ufeff" + table(row()))[0].id == "c1", "a spreadsheet's byte order mark is ignored"


def test_a_circuit_keeps_one_parent_and_one_plan() -> None:
    text = table(row("c1", ipv4="198.18.20.1"), row("c1", ipv4="198.18.20.2", parent="site2"),
                 row("c1", ipv4="198.18.20.3", rates=("10", "5", "200", "20")))
    assert errors(text) == [("csv", 3, "Parent Node"), ("csv", 4, "Download Max Mbps")]
    assert "has Parent Node 'site1' on line 2" in messages(text)[0]


def test_two_circuits_cannot_share_an_address_the_later_row_is_refused() -> None:
    text = table(row("c1", ipv4="198.18.20.1", ipv6="2001:db8:1::/48"),
                 row("c2", ipv4="198.18.20.2"),
                 row("c3", ipv4="198.18.20.1"),  # line 4: c1's address
                 row("c4", ipv6="2001:db8:1:5::/64", ipv4=""),  # line 5: inside c1's /48
                 row("c1", ipv4="198.18.20.1", device="again"))  # line 6: same circuit: fine
    assert errors(text) == [("csv", 4, "IPv4"), ("csv", 5, "IPv6")]
    msgs = messages(text)
    assert msgs[0] == ("198.18.20.1/32 is also listed by circuit 'c1' (line 2): two circuits cannot share an "
                       "address")
    assert "overlaps 2001:db8:1::/48" in msgs[1] and "circuit 'c1' (line 2)" in msgs[1]
    covering = table(row("c1", ipv4="198.18.20.7"), row("c2", ipv4="198.18.20.0/24"))  # the later one covers
    assert errors(covering) == [("csv", 3, "IPv4")]


def test_unknown_parent_is_named_on_every_row_that_uses_it() -> None:
    text = table(row("c1", parent="site1"), row("c2", ipv4="198.18.20.2", parent="nowhere"),
                 row("c3", ipv4="198.18.20.3", parent="nowhere"), row("c4", ipv4="198.18.20.4", parent="voip"))
    locs = errors(text)
    assert locs == [("csv", 3, "Parent Node")] * 2 + [("csv", 4, "Parent Node")] * 2 + [("csv", 5, "Parent Node")] * 2
    with pytest.raises(ConfigError) as ei:
        imported_config(TREE, read_circuits(text))
    assert "needs an ingress class 'nowhere-down' (there is none)" in ei.value.errors[0]["msg"]


def test_an_empty_parent_node_takes_the_option_or_makes_a_tree_of_its_own() -> None:
    circuits = read_circuits(table(row("c1", parent="")))
    assert imported_config(TREE, circuits, parent="site2").class_by_name("sub-c1-down").parent == "site2-down"
    assert imported_config(TREE, circuits).class_by_name("sub-c1-down").parent is None


def test_class_names_from_circuit_ids() -> None:
    assert class_names("2794") == ("sub-2794-down", "sub-2794-up")
    assert class_names("pppoe-42", "isp1.") == ("isp1.pppoe-42-down", "isp1.pppoe-42-up")
    odd = "968 Circle St./Gurnee"
    digest = hashlib.sha1(odd.encode()).hexdigest()[:8]
    assert class_names(odd) == (f"sub-968_Circle_St._Gurnee-{digest}-down", f"sub-968_Circle_St._Gurnee-{digest}-up")
    long_id = "x" * 80
    down, _ = class_names(long_id)
    assert len(down) <= 64 and down == class_names(long_id)[0], "shortened, and the same on every import"


def test_two_circuits_that_would_get_one_name_are_refused() -> None:
    odd = "a b"
    clash = class_names(odd)[0][len("sub-"):-len("-down")]  # an ID that is literally the other's shortened form
    text = table(row(odd, ipv4="198.18.20.1"), row(clash, ipv4="198.18.20.2"))
    assert errors(text) == [("csv", 3, "Circuit ID"), ("csv", 3, "Circuit ID")]


def test_reimport_replaces_exactly_the_imported_set() -> None:
    first = imported_config(TREE, read_circuits(table(row("c1", ipv4="198.18.20.1"), row("c2", ipv4="198.18.20.2"),
                                                      row("c3", ipv4="198.18.20.3"))))
    assert imported_config(first, read_circuits(table(row("c1", ipv4="198.18.20.1"), row(
        "c2", ipv4="198.18.20.2"), row("c3", ipv4="198.18.20.3")))).diff(first).empty, "the same table: no change"
    second = imported_config(first, read_circuits(table(
        row("c4", ipv4="198.18.20.4"),  # new, listed first in the file
        row("c3", ipv4="198.18.20.3", rates=("20", "5", "100", "20")),  # c3's download plan changed
        row("c1", ipv4="198.18.20.1"))))  # c2 is gone
    delta = first.diff(second)
    assert delta.removed == ("sub-c2-down", "sub-c2-up")
    assert [c.name for c in delta.upserted] == ["sub-c3-down", "sub-c4-down", "sub-c4-up"]
    assert delta.order is None, "surviving circuits keep their place, new ones go last: no reordering"
    assert [c.name for c in second.classes][:5] == [c.name for c in TREE.classes], "hand-made classes untouched"


def test_a_class_changed_by_hand_is_taken_back_by_the_import() -> None:
    cfg = imported_config(TREE, read_circuits(table(row("c1"))))
    tweaked = cfg.with_class_changed("sub-c1-down", {"prio": 3})
    again = imported_config(tweaked, read_circuits(table(row("c1"))))
    assert again.class_by_name("sub-c1-down").prio == 0 and again == cfg


def test_the_parents_ceil_bounds_the_circuits_minimums() -> None:
    small = parse_config({"classes": [{"name": "s-down", "direction": "ingress", "rate": "15mbit"},
                                      {"name": "s-up", "direction": "egress", "rate": "1gbit"}]})
    text = table(row("c1", ipv4="198.18.20.1", parent="s"), row("c2", ipv4="198.18.20.2", parent="s"))
    with pytest.raises(ConfigError) as ei:
        imported_config(small, read_circuits(text))
    (err,) = ei.value.errors
    assert err["loc"] == ("classes", "s-down", "ceil") and "sub-c1-down 10mbit, sub-c2-down 10mbit" in err["msg"]


def test_an_empty_table_and_broken_csv() -> None:
    assert errors("") == [("csv", 1)]
    assert read_circuits(table()) == []
    assert errors(table(row("c1"), 'c2,"unterminated', row("c3"))) == [("csv", 3)], "where the broken record starts"


def test_the_example_table_imports() -> None:
    from pathlib import Path

    example = Path(__file__).resolve().parents[2] / "examples" / "ShapedDevices.csv"
    site1 = parse_config({"classes": [{"name": "site1-down", "direction": "ingress", "rate": "1gbit"},
                                      {"name": "site1-up", "direction": "egress", "rate": "1gbit"}]})
    cfg = imported_config(site1, read_circuits(example.read_text()))
    assert [c.name for c in cfg.classes][2:] == ["sub-1001-down", "sub-1001-up", "sub-1002-down", "sub-1002-up",
                                                 "sub-pppoe-42-down", "sub-pppoe-42-up"]
    assert cfg.class_by_name("sub-1002-up").rate == 500_000
