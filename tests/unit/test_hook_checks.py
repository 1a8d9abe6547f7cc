"""imqd.hook_checks: placement warnings from the nat table, and classes that matched nothing while their direction
saw traffic -- each warning shown to appear when it should and not otherwise (fake clock, no I/O)."""

from __future__ import annotations

import ipaddress
import logging
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imqd import rules
from imqd.config import Config, parse_config
from imqd.hook_checks import (MAX_LISTED, ClassTree, MIN_PACKETS, WARN_AFTER_S, MatchWatch, capped, describe_match,
                              matched_counts, parse_nat, placement_warnings)
from imqd.run_checks import NAT_REFRESH_S, RunChecks

MASQ = "*nat\n:POSTROUTING ACCEPT [0:0]\n-A POSTROUTING -o wan0 -j MASQUERADE\nCOMMIT\n"
SNAT_LAN = "-A POSTROUTING -s 10.0.0.0/8 -o wan0 -j SNAT --to-source 203.0.113.7\n"
DNAT_WEB = "-A PREROUTING -i wan0 -p tcp -m tcp --dport 80 -j DNAT --to-destination 192.168.5.5:8080\n"


def cfg(*classes: dict[str, Any]) -> Config:
    return parse_config({"classes": list(classes)})


def down(name: str, dst: str, **kw: Any) -> dict[str, Any]:
    return {"name": name, "direction": "ingress", "rate": "6mbit", "match": {"dst": dst}, **kw}


# ---------------------------------------------------------------- parse_nat
def test_parse_nat_keeps_source_and_destination_nat_with_their_addresses() -> None:
    saved = "\n".join([
        "*nat", ":PREROUTING ACCEPT [0:0]", ":MYNAT - [0:0]",
        "-A POSTROUTING -o wan0 -j MASQUERADE",
        SNAT_LAN.strip(),
        "-A MYNAT ! -s 172.16.0.0/12 -o wan1 -m comment --comment \"my 'nat'\" -j SNAT --to-source "
        "198.51.100.1-198.51.100.4:1024-65535",
        DNAT_WEB.strip(),
        "-A PREROUTING -p tcp -m tcp --dport 22 -j REDIRECT --to-ports 2222",
        "-A POSTROUTING -d 10.0.0.0/8 -j ACCEPT",
        "COMMIT",
    ])
    got = parse_nat(saved)
    assert [(r.target, r.sources) for r in got] == [
        ("MASQUERADE", None), ("SNAT", ipaddress.ip_network("10.0.0.0/8")), ("SNAT", None), ("DNAT", None)]
    assert got[1].to == ((ipaddress.ip_address("203.0.113.7"),) * 2,)
    assert got[2].to == ((ipaddress.ip_address("198.51.100.1"), ipaddress.ip_address("198.51.100.4")),), \
        "a negated -s is not a prefix: any source"
    assert got[3].to == ((ipaddress.ip_address("192.168.5.5"),) * 2,) and got[3].line == DNAT_WEB.strip()
    assert all(r.family == "ipv4" for r in got) and got[0].source_nat and not got[3].source_nat


def test_parse_nat_ipv6_brackets_and_nonsense() -> None:
    got = parse_nat("-A PREROUTING -j DNAT --to-destination [2001:db8::5]:80\n"
                    "-A PREROUTING -j DNAT --to-destination 2001:db8::6\n"
                    "-A POSTROUTING -s fd00::/8 -j MASQUERADE\n"
                    "-A POSTROUTING -s not-an-address -j MASQUERADE\n"
                    "-A BROKEN \"unterminated\n-A X -j DNAT\n", "ipv6")
    assert [r.to for r in got[:2]] == [((ipaddress.ip_address("2001:db8::5"),) * 2,),
                                       ((ipaddress.ip_address("2001:db8::6"),) * 2,)]
    assert got[2].sources == ipaddress.ip_network("fd00::/8") and got[3].sources is None
    assert got[4].to == () and all(r.family == "ipv6" for r in got)


# ---------------------------------------------------------------- placement_warnings
def test_internal_dst_before_de_nat_on_a_masquerading_router_is_reported() -> None:
    config = cfg(down("lan1", "198.18.1.2/32"))
    (line,) = placement_warnings(config, "prerouting", parse_nat(MASQ))
    assert line.startswith("class lan1 matches dst 198.18.1.2/32, but ingress is taken at mangle PREROUTING")
    assert "if 198.18.1.2/32 is an internal host" in line and "-A POSTROUTING -o wan0 -j MASQUERADE" in line
    assert line.endswith("use --ingress-hook after-nat (the default)")


def test_no_placement_warning_after_de_nat_without_nat_or_for_public_addresses() -> None:
    config = cfg(down("lan1", "198.18.1.2/32"), down("cdn", "8.8.8.0/24"))
    assert placement_warnings(config, "after-nat", parse_nat(MASQ)) == []
    assert placement_warnings(config, "prerouting", []) == []
    assert placement_warnings(config, "prerouting", parse_nat("*nat\n-A POSTROUTING -j ACCEPT\nCOMMIT\n")) == []
    assert [w.split()[1] for w in placement_warnings(config, "prerouting", parse_nat(MASQ))] == ["lan1"], \
        "a global destination is not behind the NAT"


def test_snat_with_a_source_prefix_is_certain_and_limits_what_is_reported() -> None:
    nat = parse_nat(SNAT_LAN)
    config = cfg(down("inside", "10.1.2.3/32"), down("elsewhere", "192.168.1.0/24"))
    (line,) = placement_warnings(config, "prerouting", nat)
    assert "class inside" in line and "replies to 10.1.2.3/32 are still addressed" in line and " if " not in line


def test_port_forwarded_server_before_de_nat_is_reported() -> None:
    config = cfg(down("web", "192.168.5.5/32"), down("other", "192.168.5.6/32"))
    (line,) = placement_warnings(config, "prerouting", parse_nat(DNAT_WEB))
    assert line.startswith("class web matches dst 192.168.5.5/32") and "port-forwarded" in line
    assert placement_warnings(config, "after-nat", parse_nat(DNAT_WEB)) == []


def test_snat_address_as_ingress_dst_after_de_nat_and_as_egress_src() -> None:
    config = cfg(down("public", "203.0.113.7/32"),
                 {"name": "up-public", "rate": "1mbit", "match": {"src": "203.0.113.0/24"}},
                 {"name": "up-lan", "rate": "1mbit", "match": {"src": "10.0.0.0/8"}})
    after = placement_warnings(config, "after-nat", parse_nat(SNAT_LAN))
    assert [w.split()[1] for w in after] == ["public", "up-public"]
    assert "sees only traffic to the router itself" in after[0] and "--ingress-hook prerouting" in after[0]
    assert "egress is taken at mangle POSTROUTING, before SNAT" in after[1]
    assert "cannot be built with iptables" in after[1]
    before = placement_warnings(config, "prerouting", parse_nat(SNAT_LAN))
    assert [w.split()[1] for w in before] == ["up-public"], "at PREROUTING the public address is what is seen"


def test_placement_warnings_ignore_other_families_egress_dst_defaults_and_unmatched_classes() -> None:
    config = cfg({"name": "root", "direction": "ingress", "rate": "10mbit"},
                 down("v6host", "fd00::5/128", parent="root"),
                 {"name": "rest", "direction": "ingress", "rate": "1mbit", "default": True, "parent": "root"},
                 {"name": "egress-dst", "rate": "1mbit", "match": {"dst": "198.18.1.2/32"}})
    assert placement_warnings(config, "prerouting", parse_nat(MASQ)) == []
    (v6,) = placement_warnings(config, "prerouting", parse_nat(MASQ, "ipv6"))
    assert v6.startswith("class v6host")


def test_capped_counts_what_it_leaves_out() -> None:
    assert capped(["a", "b"], "x", limit=2) == ["a", "b"]
    assert capped([str(i) for i in range(12_345)], "things", limit=3) == ["0", "1", "2", "... and 12,342 more things"]


# ---------------------------------------------------------------- matched counters
def counters(packets: int = 0, drops: int = 0, backlog: int = 0) -> dict[str, Any]:
    return {"packets": packets, "drops": drops, "backlog": {"packets": backlog, "bytes": 0}}


def test_matched_is_sent_plus_dropped_plus_queued_and_a_parent_sums_its_leaves() -> None:
    config = cfg({"name": "root", "direction": "ingress", "rate": "20mbit"},
                 down("a", "198.18.1.2/32", parent="root"), down("b", "198.18.1.3/32", parent="root"),
                 {"name": "idle", "rate": "1mbit"})
    stats = {"root": counters(packets=999), "a": counters(10, 2, 3), "b": counters(5)}
    got = matched_counts(ClassTree.of(config), stats)
    assert got == {"root": 20, "a": 15, "b": 5, "idle": 0}, "a parent's own packets count its leaves' sends again"


def test_the_leaves_of_a_parent_share_one_chain_of_ancestors() -> None:
    """The tree lives as long as the config: 10,000 subscribers under one parent hold one chain, not 10,000."""
    config = cfg({"name": "top", "direction": "ingress", "rate": "30mbit"},
                 {"name": "root", "direction": "ingress", "rate": "20mbit", "parent": "top"},
                 down("a", "198.18.1.2/32", parent="root"), down("b", "198.18.1.3/32", parent="root"),
                 {"name": "idle", "rate": "1mbit"})
    tree = ClassTree.of(config)
    assert dict(tree.chains) == {"a": ("root", "top"), "b": ("root", "top"), "idle": ()}
    assert tree.ancestors[tree.leaves.index("a")] is tree.ancestors[tree.leaves.index("b")]


def test_describe_match_reads_like_the_config() -> None:
    config = cfg({"name": "x", "rate": "1mbit", "match": {"dst": "198.18.1.0/24", "dport": "80-443", "sport": 53,
                                                          "mark": "0x10/0xff", "proto": "tcp"}},
                 {"name": "all", "rate": "1mbit", "match": {}})
    assert describe_match(config.classes[0]) == "dst 198.18.1.0/24, proto 6, sport 53, dport 80-443, mark 0x10/0xff"
    assert describe_match(config.classes[1]) == "everything"


# ---------------------------------------------------------------- MatchWatch
T0 = 1000.0


def snapshot(matched: dict[str, int], *, prerouting: int = 0, forward: int = 0, postrouting: int = 0,
             enabled: bool = True, queue: int = 0) -> dict[str, Any]:
    hooks = {"prerouting": prerouting, "input": 0, "forward": forward, "output": 0, "postrouting": postrouting}
    return {"enabled": enabled, "classes": {n: counters(p) for n, p in matched.items()},
            "workers": [{"queue": queue, "pid": 7, "hook_packets": hooks}]}


def test_no_match_warning_appears_after_ten_seconds_of_traffic_with_the_nat_hint() -> None:
    config = cfg(down("lan1", "198.18.1.2/32"))
    watch = MatchWatch(config, T0)
    assert watch.observe(T0 + WARN_AFTER_S - 0.1, config, snapshot({"lan1": 0}, prerouting=5000)) == []
    stats = snapshot({"lan1": 0}, prerouting=8412)
    (line,) = watch.observe(T0 + WARN_AFTER_S, config, stats)
    assert line.startswith("class lan1 (ingress, match dst 198.18.1.2/32) has matched no packet in 10 s "
                           "while ingress saw 8,412 packets; ingress is taken at mangle PREROUTING, before de-NAT")
    assert line.endswith("use --ingress-hook after-nat (the default)")
    assert stats["classes"]["lan1"]["matched"] == 0


def test_no_match_warning_after_de_nat_points_at_the_match_instead() -> None:
    config = cfg(down("lan1", "198.18.1.2/32"))
    watch = MatchWatch(config, T0)
    (line,) = watch.observe(T0 + 30, config, snapshot({"lan1": 0}, forward=MIN_PACKETS))
    assert "in 30 s while ingress saw 100 packets; check its match (first match wins" in line
    assert "PREROUTING" not in line


def test_no_warning_without_enough_traffic_in_the_class_direction() -> None:
    config = cfg(down("lan1", "198.18.1.2/32"))
    watch = MatchWatch(config, T0)
    assert watch.observe(T0 + 60, config, snapshot({"lan1": 0}, forward=MIN_PACKETS - 1,
                                                   postrouting=1_000_000)) == [], "egress traffic is not ingress's"


def test_a_class_that_matched_once_is_never_reported_however_long_it_is_idle() -> None:
    config = cfg(down("lan1", "198.18.1.2/32"))
    watch = MatchWatch(config, T0)
    assert watch.observe(T0 + 1, config, snapshot({"lan1": 3}, forward=50)) == []
    assert watch.observe(T0 + 3600, config, snapshot({"lan1": 3}, forward=10_000_000)) == []


def test_a_class_matched_before_the_first_read_is_not_reported() -> None:
    config = cfg(down("lan1", "198.18.1.2/32"))
    watch = MatchWatch(config, T0)
    assert watch.observe(T0 + 600, config, snapshot({"lan1": 1}, forward=10_000)) == []


def test_default_classes_and_classes_without_a_match_are_never_reported() -> None:
    config = cfg({"name": "root", "direction": "ingress", "rate": "10mbit"},
                 {"name": "rest", "direction": "ingress", "rate": "1mbit", "default": True, "parent": "root",
                  "match": {"dst": "198.18.9.0/24"}},
                 {"name": "spare", "direction": "ingress", "rate": "1mbit", "parent": "root"})
    watch = MatchWatch(config, T0)
    assert watch.observe(T0 + 60, config, snapshot({}, forward=10_000)) == []


def test_a_class_added_later_counts_from_when_it_is_first_seen() -> None:
    old = cfg(down("lan1", "198.18.1.2/32"))
    watch = MatchWatch(old, T0)
    assert watch.observe(T0 + 1, old, snapshot({"lan1": 1}, forward=10)) == []
    new = cfg(down("lan1", "198.18.1.2/32"), down("lan2", "198.18.1.3/32"))
    assert watch.observe(T0 + 100, new, snapshot({"lan1": 1, "lan2": 0}, forward=100_000)) == []
    assert watch.observe(T0 + 109, new, snapshot({"lan1": 1, "lan2": 0}, forward=200_000)) == []
    (line,) = watch.observe(T0 + 110, new, snapshot({"lan1": 1, "lan2": 0}, forward=200_000))
    assert line.startswith("class lan2 ") and "in 10 s while ingress saw 100,000 packets" in line


def test_changing_a_class_match_starts_its_wait_over() -> None:
    config = cfg(down("lan1", "198.18.1.2/32"))
    watch = MatchWatch(config, T0)
    assert watch.observe(T0 + 1, config, snapshot({"lan1": 5}, forward=10)) == []
    fixed = cfg(down("lan1", "198.18.1.99/32"))
    assert watch.observe(T0 + 2, fixed, snapshot({"lan1": 5}, forward=10)) == []
    assert watch.observe(T0 + 11, fixed, snapshot({"lan1": 5}, forward=10_000)) == []
    assert len(watch.observe(T0 + 12, fixed, snapshot({"lan1": 5}, forward=10_000))) == 1, \
        "matched before the change proves nothing about the new match"


def test_nothing_is_reported_while_shaping_is_off_and_the_wait_restarts_after() -> None:
    config = cfg(down("lan1", "198.18.1.2/32"))
    watch = MatchWatch(config, T0)
    assert watch.observe(T0 + 60, config, snapshot({"lan1": 0}, forward=10_000, enabled=False)) == []
    assert watch.observe(T0 + 65, config, snapshot({"lan1": 0}, forward=20_000)) == []
    assert len(watch.observe(T0 + 70, config, snapshot({"lan1": 0}, forward=30_000))) == 1


def test_a_restarted_worker_neither_hides_traffic_nor_counts_it_twice() -> None:
    config = cfg(down("lan1", "198.18.1.2/32"))
    watch = MatchWatch(config, T0)
    watch.observe(T0 + 1, config, snapshot({"lan1": 0}, forward=60))
    watch.observe(T0 + 2, config, snapshot({"lan1": 0}, forward=60))  # the same report again: nothing new
    (line,) = watch.observe(T0 + 10, config, snapshot({"lan1": 0}, forward=45))  # new worker: 45 new packets
    assert "while ingress saw 105 packets" in line


def test_a_class_counter_that_falls_starts_the_wait_over() -> None:
    config = cfg(down("lan1", "198.18.1.2/32"))
    watch = MatchWatch(config, T0)
    watch.observe(T0 + 1, config, snapshot({"lan1": 0}, forward=10))
    assert watch.observe(T0 + 9, config, snapshot({"lan1": 0}, forward=500, queue=1)) == []


def test_ten_thousand_idle_classes_give_a_bounded_list() -> None:
    classes = [down(f"sub{i}", str(ipaddress.ip_address("10.0.0.0") + i) + "/32") for i in range(10_000)]
    config = cfg(*classes)
    watch = MatchWatch(config, T0)
    stats = snapshot({f"sub{i}": int(i % 3 == 0) for i in range(10_000)}, forward=10**6)
    lines = watch.observe(T0 + 20, config, stats)
    assert len(lines) == MAX_LISTED + 1 and lines[0].startswith("class sub1 ")
    assert lines[-1] == (f"... and {6666 - MAX_LISTED:,} more classes that have matched no packet while their "
                         "direction saw traffic")
    assert stats["classes"]["sub3"]["matched"] == 1


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0.0, 8.0), st.integers(0, 400), st.integers(0, 2)), min_size=1, max_size=12))
def test_reported_only_after_the_window_with_traffic_and_never_after_a_match(
        steps: list[tuple[float, int, int]]) -> None:
    """Against a direct model: report iff nothing matched yet, >= WARN_AFTER_S since start, >= MIN_PACKETS seen."""
    config = cfg(down("lan1", "198.18.1.2/32"))
    watch = MatchWatch(config, T0)
    now, forward, matched = T0, 0, 0
    for dt, packets, hits in steps:
        now, forward, matched = now + dt, forward + packets, matched + hits
        got = watch.observe(now, config, snapshot({"lan1": matched}, forward=forward))
        expected = matched == 0 and now - T0 >= WARN_AFTER_S and forward >= MIN_PACKETS
        assert bool(got) == expected, (now - T0, forward, matched, got)


# ---------------------------------------------------------------- RunChecks: the stats hook of imqd run
class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def test_run_checks_add_placement_and_no_match_warnings_and_read_the_nat_table_sparingly() -> None:
    clock, reads = Clock(), []

    def read() -> list:
        reads.append(clock.now)
        return parse_nat(MASQ)

    config = cfg(down("lan1", "198.18.1.2/32"))
    checks = RunChecks(config, "prerouting", read_nat=read, clock=clock)
    stats = checks(config, snapshot({"lan1": 0}, prerouting=10))
    assert [w.split(",")[0] for w in stats["warnings"]] == ["class lan1 matches dst 198.18.1.2/32"]
    assert stats["classes"]["lan1"]["matched"] == 0
    clock.now += WARN_AFTER_S
    stats = checks(config, snapshot({"lan1": 0}, prerouting=10_000))
    assert len(stats["warnings"]) == 2 and "has matched no packet in 10 s" in stats["warnings"][1]
    assert reads == [T0], "read once; again only after NAT_REFRESH_S"
    clock.now = T0 + NAT_REFRESH_S
    checks(config, snapshot({"lan1": 0}, prerouting=10_000))
    assert reads == [T0, T0 + NAT_REFRESH_S]


def test_run_checks_after_de_nat_give_no_warning_for_a_class_that_matches() -> None:
    clock = Clock()
    config = cfg(down("lan1", "198.18.1.2/32"))
    checks = RunChecks(config, rules.DEFAULT_INGRESS_HOOK, read_nat=lambda: parse_nat(MASQ), clock=clock)
    clock.now += 60
    assert checks(config, snapshot({"lan1": 4000}, forward=10_000))["warnings"] == []


def test_run_checks_survive_an_unreadable_nat_table_and_log_it_once(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()

    def read() -> list:
        raise rules.RulesError("iptables-save: permission denied -- managing imqd's rules needs CAP_NET_ADMIN")

    config = cfg(down("lan1", "198.18.1.2/32"))
    checks = RunChecks(config, "prerouting", read_nat=read, clock=clock)
    with caplog.at_level(logging.WARNING, logger="imqd.checks"):
        for _ in range(3):
            clock.now += NAT_REFRESH_S
            assert checks(config, snapshot({"lan1": 1}))["warnings"] == []
    assert [r.getMessage() for r in caplog.records].count(
        "cannot read the nat table, NAT placement checks skipped: iptables-save: permission denied -- managing "
        "imqd's rules needs CAP_NET_ADMIN") == 1


def test_run_checks_recompute_placement_when_the_config_changes() -> None:
    clock = Clock()
    config = cfg(down("lan1", "8.8.8.8/32"))
    checks = RunChecks(config, "prerouting", read_nat=lambda: parse_nat(MASQ), clock=clock)
    assert checks.placement(config) == []
    changed = cfg(down("lan1", "198.18.1.2/32"))
    assert len(checks.placement(changed)) == 1


def test_run_checks_memo_agrees_with_placement_warnings_and_rechecks_only_changed_classes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import imqd.run_checks as run_checks

    calls: list[str] = []
    real = run_checks.class_placement_warning

    def counting(c: Any, hook: str, nat: Any) -> str | None:
        calls.append(c.name)
        return real(c, hook, nat)

    monkeypatch.setattr(run_checks, "class_placement_warning", counting)
    clock = Clock()
    nat = parse_nat(MASQ + SNAT_LAN)
    config = cfg(*[down(f"h{i}", f"10.0.0.{i}/32") for i in range(1, 6)], down("cdn", "8.8.8.8/32"))
    checks = RunChecks(config, "prerouting", read_nat=lambda: parse_nat(MASQ + SNAT_LAN), clock=clock)
    assert checks.placement(config) == placement_warnings(config, "prerouting", nat)
    assert sorted(calls) == sorted(["h1", "h2", "h3", "h4", "h5", "cdn"])
    calls.clear()
    changed = cfg(*[down(f"h{i}", f"10.0.0.{i}/32") for i in range(1, 5)], down("h5", "8.8.4.4/32"),
                  down("cdn", "8.8.8.8/32"))
    assert checks.placement(changed) == placement_warnings(changed, "prerouting", nat)
    assert calls == ["h5"], "only the changed class is checked again"
    clock.now += NAT_REFRESH_S  # the same nat table read again: nothing recomputed
    assert checks.placement(changed) == placement_warnings(changed, "prerouting", nat) and calls == ["h5"]
