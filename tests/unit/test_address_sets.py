"""Address sets: which prefixes a config's rules queue (imqd.address_sets), and the follower that keeps the
kernel's ipsets and iptables rules in step with config changes (imqd.rules_follow), against models of both."""

from __future__ import annotations

import ipaddress
import shlex
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_rules_build import FakeIptables

from imqd import address_sets, ipsets
from imqd.address_sets import SetKey, delta, plan
from imqd.classifier import Classifier
from imqd.config import Config, parse_config
from imqd.config_fields import cidr_list
from imqd.packet import PacketInfo
from imqd.rules import RuleOptions, RulesError, for_config
from imqd.rules_follow import RulesFollower

V4 = ipaddress.ip_network("198.18.0.0/15")
V6 = ipaddress.ip_network("2001:2::/48")


@st.composite
def prefixes(draw: st.DrawFn) -> str:
    net = draw(st.sampled_from([V4, V6]))
    plen = draw(st.integers(net.prefixlen + 8, net.max_prefixlen))
    host = draw(st.integers(0, 255)) << (net.max_prefixlen - net.prefixlen - 8)  # a few distinct subnets
    addr = int(net.network_address) + host + draw(st.integers(0, 3))
    return str(ipaddress.ip_network((addr, plen), strict=False))


@st.composite
def class_specs(draw: st.DrawFn, name: str, direction: str) -> dict:
    match: dict = {}
    for field in draw(st.sampled_from([("dst",), ("src",), ("src", "dst"), (), ("dst",)])):
        cidrs = draw(st.lists(prefixes(), min_size=1, max_size=3, unique=True))
        match[field] = cidrs if len(cidrs) > 1 else cidrs[0]
    if draw(st.booleans()):
        match["proto"] = "tcp"
    if not match or draw(st.integers(0, 9)) == 0:
        match["dport"] = draw(st.integers(1, 3))  # a class that names no address (or an extra condition)
    return {"name": name, "direction": direction, "rate": "1mbit", "match": match}


def build(specs: list[dict]) -> Config | None:
    try:
        return parse_config({"classes": specs})
    except Exception:
        return None  # e.g. src and dst of different families only


@st.composite
def configs(draw: st.DrawFn, direction: str = "egress", max_classes: int = 6) -> Config:
    n = draw(st.integers(0, max_classes))
    specs = [draw(class_specs(f"c{i}", draw(st.sampled_from([direction, direction, "ingress"])))) for i in range(n)]
    if draw(st.integers(0, 7)) == 0:
        specs.append({"name": "rest", "direction": direction, "rate": "1mbit", "default": True})
    cfg = build(specs)
    if cfg is None:
        cfg = build([s for s in specs if "src" not in s.get("match", {})]) or Config()
    return cfg


def _in(members: frozenset[str], addr: int, family: int) -> bool:
    ip = ipaddress.ip_address(addr) if family == 4 else ipaddress.IPv6Address(addr)
    return any(ip in ipaddress.ip_network(c) for c in members)


@st.composite
def packets_near(draw: st.DrawFn, cfg: Config) -> PacketInfo:
    """Packets whose addresses are often inside the config's prefixes (else the property is idle)."""
    names = [c for m in (x.match for x in cfg.classes if x.match) for c in cidr_list(m.dst) + cidr_list(m.src)]
    family = draw(st.sampled_from([4, 6]))
    pool = [ipaddress.ip_network(c) for c in names if (":" in c) == (family == 6)]
    pool.append(V4 if family == 4 else V6)

    def addr() -> int:
        net = draw(st.sampled_from(pool))
        return int(net.network_address) + draw(st.integers(0, net.num_addresses - 1))

    return PacketInfo(family, addr(), addr(), 6, 40000, draw(st.integers(1, 3)), 0, 100, False, 0)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_no_packet_a_class_can_take_escapes_the_sets(data: st.DataObject) -> None:
    """Soundness: whenever the classifier gives a packet a class, the packet is in one of the direction's sets;
    and the plan falls back exactly when a default class, an address-less class or a /0 exists."""
    cfg = data.draw(configs())
    p = plan(cfg, "egress")
    leaves = cfg.matching_leaves("egress")
    addressless = any(c.match.src is None and c.match.dst is None for c in leaves)
    assert (p.members is None) == (cfg.default_class("egress") is not None or addressless), p.reason
    if p.members is None:
        assert p.reason and "\n" not in p.reason
        return
    assert set(p.members) == {SetKey("egress", f, fam) for f in ("dst", "src") for fam in (4, 6)}
    classify = Classifier.from_config(cfg, "egress").classify
    for _ in range(20):
        info = data.draw(packets_near(cfg))
        if classify(info, 0, None, None) is not None:
            fam = info.family
            assert _in(p.members[SetKey("egress", "dst", fam)], info.dst, fam) or _in(
                p.members[SetKey("egress", "src", fam)], info.src, fam), (info, p.members)


@settings(max_examples=200, deadline=None)
@given(configs())
def test_members_come_from_the_classes_each_in_its_family_and_field(cfg: Config) -> None:
    p = plan(cfg, "egress")
    if p.members is None:
        return
    named = {(f, c) for x in cfg.matching_leaves("egress") for f in ("dst", "src")
             for c in cidr_list(getattr(x.match, f))}
    for key, members in p.members.items():
        for cidr in members:
            assert (key.field, cidr) in named
            assert (":" in cidr) == (key.family == 6)
    dst_named = {c for f, c in named if f == "dst"}
    assert set().union(*(p.members[SetKey("egress", "dst", fam)] for fam in (4, 6))) <= dst_named


def test_plan_reasons_and_the_v4_only_form() -> None:
    cfg = parse_config({"classes": [
        {"name": "a", "rate": "1mbit", "match": {"dst": ["198.18.1.0/24", "2001:2::/64"]}},
        {"name": "b", "rate": "1mbit", "match": {"src": "198.18.7.7", "dst": "198.18.9.0/24"}},
        {"name": "c", "rate": "1mbit", "match": {"src": "198.18.8.0/24"}}]})
    p = plan(cfg, "egress", families=(4,))
    assert p.members == {SetKey("egress", "dst", 4): {"198.18.1.0/24", "198.18.9.0/24"},
                         SetKey("egress", "src", 4): {"198.18.8.0/24"}}
    assert plan(cfg, "ingress").members == {k: frozenset() for k in address_sets.keys("ingress")}
    web = parse_config({"classes": [{"name": "web", "rate": "1mbit", "match": {"dport": 443}}]})
    assert plan(web, "egress").reason == "class 'web' names no src or dst address"
    dflt = parse_config({"classes": [{"name": "d", "rate": "1mbit", "default": True}]})
    assert "'d' is the default" in plan(dflt, "egress").reason
    every = parse_config({"classes": [{"name": "all", "rate": "1mbit", "match": {"dst": "0.0.0.0/0"}}]})
    assert plan(every, "egress").reason == "class 'all' matches every address (0.0.0.0/0)"


members_st = st.dictionaries(st.sampled_from(address_sets.keys("egress")), st.frozensets(prefixes(), max_size=5),
                             max_size=4)


@given(members_st, members_st)
def test_delta_turns_old_into_new_with_no_wasted_step(old: dict, new: dict) -> None:
    d = delta(old, new)
    for key in set(old) | set(new):
        was, now = old.get(key, frozenset()), new.get(key, frozenset())
        add, dele = d.get(key, (frozenset(), frozenset()))
        assert (was | add) - dele == now
        assert not add & was and dele <= was, "only what changed is sent"
        assert (key in d) == (was != now)
    assert delta(new, new) == {}


def test_set_names_fit_ipset_and_carry_imqds_prefix() -> None:
    import re

    for key in address_sets.keys("ingress") + address_sets.keys("egress"):
        name = address_sets.set_name(address_sets.set_prefix(65535), key) + "-tmp"
        assert len(name) <= 31 and re.fullmatch(address_sets.IMQD_SET_RE, name)
    assert address_sets.set_name("imqd-q0", SetKey("egress", "dst", 6)) == "imqd-q0-egress-dst6"


def test_rules_match_the_sets_per_family_and_interface() -> None:
    cfg = parse_config({"classes": [{"name": "a", "rate": "1mbit", "match": {"dst": "198.18.1.0/24", "oif": "w0"}}]})
    plans = {d: plan(cfg, d) for d in ("ingress", "egress")}
    opts = for_config(RuleOptions(queues=(2, 3)), cfg, plans)
    assert opts.egress_sets and not opts.ingress_sets and not opts.ingress
    from imqd.rules import build_rules

    v6 = [r for r in build_rules(opts)["ipv6"] if r[2:4] == ["-A", "IMQD_EGRESS"]]
    assert [r[4:11] for r in v6] == [["-o", "w0", "-m", "set", "--match-set", "imqd-q2-egress-dst6", "dst"],
                                     ["-o", "w0", "-m", "set", "--match-set", "imqd-q2-egress-src6", "src"]]
    assert for_config(RuleOptions(queues=(2, 3)), cfg) == for_config(RuleOptions(queues=(2, 3)), cfg, None)
    assert not for_config(RuleOptions(queues=(2, 3)), cfg).egress_sets


# ---------------------------------------------------------------- the follower against kernel models
class FakeKernel(FakeIptables):
    """FakeIptables plus ipset restore / list -n, with the kernel's rules: a rule cannot name a missing set,
    a set a rule names cannot be destroyed; every set operation is recorded."""

    def __init__(self, ipset_missing: bool = False) -> None:
        super().__init__()
        self.sets: dict[str, set[str]] = {}
        self.ops: list[str] = []
        self.ipset_missing = ipset_missing

    def referenced(self) -> set[str]:
        out = set()
        for fam in self.tables:
            for rules in self.tables[fam].values():
                for r in rules:
                    toks = r.split()
                    out |= {toks[i + 1] for i, t in enumerate(toks) if t == "--match-set"}
        return out

    def __call__(self, argv: list[str], **kw: object) -> subprocess.CompletedProcess:
        if argv[0] != "ipset":
            res = super().__call__(argv, **kw)
            assert self.referenced() <= set(self.sets), "a rule names a set that does not exist"
            return res
        if self.ipset_missing:
            raise FileNotFoundError(2, "No such file", "ipset")
        if argv[1:] == ["list", "-n"]:
            return subprocess.CompletedProcess(argv, 0, "".join(n + "\n" for n in self.sets), "")
        assert argv[1:] == ["restore"]
        for line in str(kw["input"]).splitlines():
            self.ops.append(line)
            cmd, name, *rest = shlex.split(line)
            if cmd == "create":
                self.sets.setdefault(name, set())
            elif cmd == "flush":
                self.sets[name].clear()
            elif cmd == "add":
                self.sets[name].add(rest[0])
            elif cmd == "del":
                self.sets[name].discard(rest[0])
            elif cmd == "swap":
                self.sets[name], self.sets[rest[0]] = self.sets[rest[0]], self.sets[name]
            elif cmd == "destroy":
                assert name not in self.referenced(), f"destroying {name}, which a rule names"
                del self.sets[name]
            else:
                raise AssertionError(line)
        return subprocess.CompletedProcess(argv, 0, "", "")


def expected_sets(follower: RulesFollower, cfg: Config) -> dict[str, set[str]]:
    out = {}
    for d in ("ingress", "egress"):
        p = plan(cfg, d)
        if p.members is not None and (cfg.matching_leaves(d) or cfg.default_class(d)):
            out |= {address_sets.set_name(follower.prefix, k): set(v) for k, v in p.members.items()}
    return out


@settings(max_examples=60, deadline=None)
@given(st.lists(configs(max_classes=4), min_size=1, max_size=5))
def test_follower_keeps_sets_and_rules_in_step_incrementally(cfgs: list[Config]) -> None:
    kernel = FakeKernel()
    kernel.sets["imqd-q0-egress-dst4"] = {"198.19.9.0/24"}  # left by a run that crashed
    kernel.sets["operators-own"] = {"1.2.3.0/24"}
    follower = RulesFollower(RuleOptions(queues=(0, 1)), runner=kernel)
    follower.start(cfgs[0])
    for cfg in cfgs:
        before = {n: set(v) for n, v in kernel.sets.items()}
        kernel.ops.clear()
        follower(cfg)
        want = expected_sets(follower, cfg)
        assert {n: v for n, v in kernel.sets.items() if n != "operators-own"} == want
        for op in kernel.ops:  # a set that stays only gets the prefixes that changed
            cmd, name, *rest = op.split()
            if name in before and name in want and cmd in ("add", "del"):
                assert (rest[0] in want[name]) == (cmd == "add") and (rest[0] in before[name]) == (cmd == "del")
            if cmd == "swap":
                assert not (rest[0] in before and rest[0] in want), f"a live set was rebuilt: {op}"
        assert kernel.referenced() == {n for n in want}, "the rules name exactly the wanted sets"
    follower.stop()
    assert set(kernel.sets) == {"operators-own"}, "imqd's sets are gone, the operator's stay"
    assert not kernel.referenced()


def test_follower_without_ipset_queues_by_interface_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    kernel = FakeKernel(ipset_missing=True)
    follower = RulesFollower(RuleOptions(queues=(0, 0)), runner=kernel)
    cfg = parse_config({"classes": [{"name": "a", "rate": "1mbit", "match": {"dst": "198.18.1.0/24"}}]})
    with caplog.at_level("INFO", logger="imqd"):
        follower.start(cfg)
    assert "address sets off" in caplog.text and "apt-get install ipset" in caplog.text
    assert follower.installed is not None and follower.installed.egress and not follower.installed.egress_sets
    follower.stop()


def test_follower_logs_one_line_when_a_direction_changes_shape(caplog: pytest.LogCaptureFixture) -> None:
    kernel = FakeKernel()
    follower = RulesFollower(RuleOptions(queues=(0, 0), ipv6=False), runner=kernel)
    a = {"name": "a", "rate": "1mbit", "match": {"dst": "198.18.1.0/24"}}
    with caplog.at_level("INFO", logger="imqd"):
        follower.start(parse_config({"classes": [a]}))
        follower(parse_config({"classes": [a, {**a, "name": "b", "match": {"dst": "198.18.2.0/24"}}]}))
        follower(parse_config({"classes": [a, {"name": "web", "rate": "1mbit", "match": {"dport": 80}}]}))
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["egress: queueing only packets to or from the classes' 1 prefixes (ipsets imqd-q0-egress-*)",
                     "egress: queueing every packet of the direction, address sets do not apply: class 'web' "
                     "names no src or dst address"]
    assert not kernel.sets, "no rule names the sets any more: destroyed"
    follower.stop()


def test_a_failed_update_is_reported_and_the_next_change_rebuilds() -> None:
    kernel = FakeKernel()
    follower = RulesFollower(RuleOptions(queues=(0, 0), ipv6=False), runner=kernel)
    a = {"name": "a", "rate": "1mbit", "match": {"dst": "198.18.1.0/24"}}
    follower.start(parse_config({"classes": [a]}))
    real = kernel.__call__

    def failing(argv: list[str], **kw: object) -> subprocess.CompletedProcess:
        if argv[:2] == ["ipset", "restore"]:
            return subprocess.CompletedProcess(argv, 1, "", "ipset v7.17: Error in line 1: Kernel error\n")
        return real(argv, **kw)

    follower.runner = failing
    b = {**a, "name": "b", "match": {"dst": "198.18.2.0/24"}}
    with pytest.raises(RulesError, match="ipset"):
        follower(parse_config({"classes": [a, b]}))
    follower.runner = kernel
    follower(parse_config({"classes": [a, b]}))
    assert kernel.sets["imqd-q0-egress-dst4"] == {"198.18.1.0/24", "198.18.2.0/24"}
    assert any(op.startswith("swap") for op in kernel.ops[-4:]), "rebuilt whole, atomically"
    follower.stop()


def test_ipset_errors_are_one_line() -> None:
    def run(argv: list[str], **kw: object) -> subprocess.CompletedProcess:
        return subprocess.CompletedProcess(argv, 1, "", "ipset v7.17: Operation not permitted\nmore\n")

    with pytest.raises(RulesError, match="^ipset: permission denied -- .*CAP_NET_ADMIN"):
        ipsets.names(run)
