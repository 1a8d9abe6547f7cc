"""imqd.rules against real iptables/ip6tables inside the lab's router namespace."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from imqd import rules
from imqd.netns import Topology
from imqd.rules import EGRESS_HOOKS, INGRESS_HOOKS, RuleOptions, RulesError

REPO = Path(__file__).resolve().parents[2]
FAMILIES = {"ipv4": "iptables", "ipv6": "ip6tables"}

# Binds one NFQUEUE, records (hook, src, dst) of IPv4 packets and accepts them; prints JSON when done.
LISTENER = r"""
import json, select, socket, sys, time
from netfilterqueue import NetfilterQueue
seen = []
def cb(pkt):
    p = pkt.get_payload()
    if p[0] >> 4 == 4:
        seen.append((pkt.hook, socket.inet_ntoa(p[12:16]), socket.inet_ntoa(p[16:20])))
    pkt.accept()
q = NetfilterQueue()
q.bind(int(sys.argv[1]), cb)
print("ready", flush=True)
deadline = time.monotonic() + float(sys.argv[2])
while time.monotonic() < deadline and len(seen) < int(sys.argv[3]):
    if select.select([q.get_fd()], [], [], 0.05)[0]:
        q.run(block=False)
q.unbind()
print(json.dumps(seen), flush=True)
"""


def save(topo: Topology, family: str = "ipv4") -> str:
    """iptables-save without counters and without its timestamped comment lines."""
    out = topo.exec(topo.router_ns, [f"{FAMILIES[family]}-save"]).stdout
    return "".join(line + "\n" for line in out.splitlines() if not line.startswith("#"))


def add_other_rules(topo: Topology) -> None:
    """Rules that are not imqd's, in mangle (built-in and user chains), filter and nat, for both families."""
    for tool in FAMILIES.values():
        for argv in (
            ["-t", "mangle", "-A", "PREROUTING", "-p", "tcp", "--dport", "22", "-j", "MARK", "--set-mark", "7"],
            ["-t", "mangle", "-N", "OTHER"],
            ["-t", "mangle", "-A", "OTHER", "-m", "comment", "--comment", "not imqd at all", "-j", "RETURN"],
            ["-t", "mangle", "-A", "POSTROUTING", "-j", "OTHER"],
            ["-t", "mangle", "-A", "FORWARD", "-p", "udp", "-j", "MARK", "--set-mark", "3"],
            ["-t", "filter", "-A", "INPUT", "-p", "tcp", "--dport", "23", "-j", "DROP"],
            ["-t", "nat", "-A", "POSTROUTING", "-o", topo.wan_iface, "-p", "tcp", "--dport", "9", "-j", "MASQUERADE"],
        ):
            topo.exec(topo.router_ns, [tool, *argv])


@pytest.fixture
def router(topology: Topology):
    """(topology, runner that executes in the router namespace)."""
    return topology, topology.runner(topology.router_ns)


def test_apply_twice_equals_apply_once(router) -> None:
    topo, run = router
    add_other_rules(topo)
    opts = RuleOptions(queues=(0, 3), in_ifaces=(topo.wan_iface,))
    rules.apply(opts, runner=run)
    once = {f: save(topo, f) for f in FAMILIES}
    rules.apply(opts, runner=run)
    assert {f: save(topo, f) for f in FAMILIES} == once
    for fam in FAMILIES:
        assert f"-A IMQD_INGRESS -i {topo.wan_iface} -j NFQUEUE --queue-balance 0:3 --queue-bypass\n" in once[fam]
        assert "-A FORWARD -m comment --comment imqd -j IMQD_INGRESS\n" in once[fam]
        assert "-A INPUT -m comment --comment imqd -j IMQD_INGRESS\n" in once[fam]
        assert once[fam].count("--comment imqd") == 3


def test_remove_restores_iptables_save_byte_for_byte(router) -> None:
    topo, run = router
    add_other_rules(topo)
    before = {f: save(topo, f) for f in FAMILIES}
    rules.apply(RuleOptions(queues=(0, 1), policy="cpu", ingress_hook="prerouting"), runner=run)
    rules.apply(RuleOptions(queues=(2, 2), bypass=False, out_ifaces=(topo.wan_iface, "lan+")), runner=run)
    middle = {f: save(topo, f) for f in FAMILIES}
    assert all(middle[f] != before[f] for f in FAMILIES)
    assert "-A FORWARD -m comment --comment imqd -j IMQD_INGRESS" in middle["ipv4"]
    assert "-A PREROUTING -m comment --comment imqd" not in middle["ipv4"]  # the old jump went away
    rules.remove(runner=run)
    assert {f: save(topo, f) for f in FAMILIES} == before
    rules.remove(runner=run)  # nothing left: a no-op
    assert {f: save(topo, f) for f in FAMILIES} == before


def test_show_reports_rules_and_counters(router) -> None:
    topo, run = router
    assert rules.show(runner=run).count("(no imqd rules)") == 2
    rules.apply(RuleOptions(queues=(0, 3)), runner=run)
    assert len(topo.ping(0, count=3, interval=0.05)) == 3  # fail open: no listener, packets pass
    text = rules.show(runner=run)
    lines = text.splitlines()
    assert "# ipv4 (iptables -t mangle)" in lines and "# ipv6 (ip6tables -t mangle)" in lines
    v4 = lines[lines.index("# ipv4 (iptables -t mangle)") + 1:lines.index("# ipv6 (ip6tables -t mangle)")]
    jump = next(ln for ln in v4 if ln.endswith("-A FORWARD -m comment --comment imqd -j IMQD_INGRESS"))
    packets = int(jump[1:].split(":")[0])
    assert packets >= 6  # 3 requests + 3 replies were forwarded
    assert any("-A IMQD_EGRESS ! -o lo -j NFQUEUE --queue-balance 0:3 --queue-bypass" in ln for ln in v4)


def test_ipv6_rules_and_fail_open_over_ipv6(router) -> None:
    topo, run = router
    rules.apply(RuleOptions(queues=(4, 5)), runner=run)
    v6 = save(topo, "ipv6")
    assert "-A IMQD_INGRESS ! -i lo -j NFQUEUE --queue-balance 4:5 --queue-bypass" in v6
    assert len(topo.ping(0, count=2, interval=0.05, v6=True)) == 2
    rules.apply(RuleOptions(queues=(4, 5), ipv6=False), runner=run)
    assert "IMQD" not in save(topo, "ipv6") and "IMQD" in save(topo, "ipv4")


def test_fail_open_and_fail_closed_without_listener(router) -> None:
    topo, run = router
    assert len(topo.ping(0, count=2, interval=0.05)) == 2
    rules.apply(RuleOptions(queues=(0, 3), bypass=True), runner=run)
    assert len(topo.ping(0, count=3, interval=0.05)) == 3
    rules.apply(RuleOptions(queues=(0, 3), bypass=False), runner=run)
    assert topo.ping(0, count=3, interval=0.05, deadline=1) == []
    assert topo.ping(0, count=2, interval=0.05, v6=True, deadline=1) == []
    rules.remove(runner=run)
    assert len(topo.ping(0, count=2, interval=0.05)) == 2


@pytest.mark.parametrize(("path", "family"), [("deploy/iptables.rules", "ipv4"), ("deploy/ip6tables.rules", "ipv6")])
def test_deploy_file_loads_and_equals_apply(router, path: str, family: str) -> None:
    topo, run = router
    add_other_rules(topo)
    before = save(topo, family)
    text = (REPO / path).read_text()
    topo.exec(topo.router_ns, [f"{FAMILIES[family]}-restore", "--noflush"], input=text)
    loaded = save(topo, family)
    assert "-A FORWARD -m comment --comment imqd -j IMQD_INGRESS" in loaded
    assert "-A INPUT -m comment --comment imqd -j IMQD_INGRESS" in loaded
    rules.remove(runner=run)
    assert save(topo, family) == before
    rules.apply(RuleOptions(queues=(0, 3)), runner=run)
    assert save(topo, family) == loaded


def run_listener(topo: Topology, queue: int, wanted: int, traffic, seconds: float = 8) -> list[tuple[int, str, str]]:
    proc = topo.popen(topo.router_ns, [sys.executable, "-c", LISTENER, str(queue), str(seconds), str(wanted)],
                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready", proc.stderr.read() if proc.stderr else ""
    traffic()
    out, err = proc.communicate(timeout=seconds + 7)
    assert proc.returncode == 0, err
    return [tuple(x) for x in json.loads(out)]


def test_default_ingress_sees_internal_hosts_and_prerouting_sees_the_public_address(topology_factory) -> None:
    """IMQ's AB by default: on a masquerading router ingress sees the internal host as the destination of a
    reply (mangle FORWARD, after de-NAT); ``ingress_hook="prerouting"`` (IMQ's BA/BB) sees the router's public
    address there.  Egress (mangle POSTROUTING, before SNAT) sees the internal source either way."""
    topo = topology_factory(masquerade=True)
    run = topo.runner(topo.router_ns)
    client, server, public = topo.clients[0].addr4, topo.server_addr4, topo.router_wan_addr4

    def ping() -> None:
        assert len(topo.ping(0, count=3, interval=0.1)) == 3  # packets pass through the listener

    wan = (topo.wan_iface,)
    rules.apply(RuleOptions(queues=(0, 0), in_ifaces=wan, out_ifaces=wan, ipv6=False), runner=run)
    seen = run_listener(topo, 0, 6, ping)
    ingress = [p for p in seen if p[0] in INGRESS_HOOKS]
    egress = [p for p in seen if p[0] in EGRESS_HOOKS]
    assert ingress and all(p == (rules.HOOK_FORWARD, server, client) for p in ingress), seen
    assert egress and all(p == (rules.HOOK_POSTROUTING, client, server) for p in egress), seen

    # The before-NAT placement: at mangle PREROUTING the same replies are still addressed to the public address.
    rules.apply(RuleOptions(queues=(0, 0), ingress_hook="prerouting", in_ifaces=wan, out_ifaces=wan, ipv6=False),
                runner=run)
    seen = run_listener(topo, 0, 6, ping)
    ingress = [p for p in seen if p[0] in INGRESS_HOOKS]
    assert ingress and all(p == (rules.HOOK_PREROUTING, server, public) for p in ingress), seen


def test_default_ingress_takes_traffic_to_the_router_at_input_and_its_replies_at_postrouting(router) -> None:
    """After de-NAT, traffic to the router itself is ingress at mangle INPUT; what the router sends (OUTPUT)
    is egress at POSTROUTING, as under IMQ, whose egress hook was POSTROUTING too."""
    topo, run = router
    gateway, client = topo.clients[0].gw4, topo.clients[0].addr4
    rules.apply(RuleOptions(queues=(0, 0), ipv6=False), runner=run)
    seen = run_listener(topo, 0, 6, lambda: topo.ping(0, count=3, interval=0.1, target=gateway))
    assert sorted(set(seen)) == [(rules.HOOK_INPUT, client, gateway), (rules.HOOK_POSTROUTING, gateway, client)], seen


def test_egress_after_snat_cannot_be_built_nat_postrouting_is_no_per_packet_hook(topology_factory) -> None:
    """Why imqd refuses IMQ's AA/BA: after mangle (-150) the only iptables table at POSTROUTING is nat (100), and
    its chains are walked only while a connection has no NAT binding yet.  NFQUEUE there, before MASQUERADE,
    leaves the binding unset (the connection is never masqueraded: no reply comes back); after MASQUERADE,
    which ends the walk, it never sees a masqueraded packet.  Neither is a hook after SNAT for every packet."""
    topo = topology_factory(masquerade=True)
    queue = ["-o", topo.wan_iface, "-j", "NFQUEUE", "--queue-num", "0"]
    client, server = topo.clients[0].addr4, topo.server_addr4
    for position, expect_replies in ((["-I", "POSTROUTING", "1"], False), (["-A", "POSTROUTING"], True)):
        topo.exec(topo.router_ns, ["iptables", "-t", "nat", *position, *queue])
        rtts: list[float] = []
        try:
            seen = run_listener(topo, 0, 99, lambda: rtts.extend(topo.ping(0, count=4, interval=0.1, deadline=2)),
                                seconds=2.5)
        finally:
            topo.exec(topo.router_ns, ["iptables", "-t", "nat", "-D", "POSTROUTING", *queue])
        if expect_replies:
            assert len(rtts) == 4 and seen == [], f"after MASQUERADE: nothing queued ({seen}), NAT works ({rtts})"
        else:
            assert rtts == [], "before MASQUERADE: the connection is never masqueraded, no reply"
            assert seen and all(p == (rules.HOOK_POSTROUTING, client, server) for p in seen), \
                f"queued with the internal source, i.e. not after SNAT: {seen}"


def test_errors_are_one_line(router) -> None:
    topo, _ = router

    def no_cap(argv, **kw):
        return topo.exec(topo.router_ns, ["setpriv", "--inh-caps=-net_admin", "--bounding-set=-net_admin", *argv],
                         check=False, **{k: v for k, v in kw.items() if k != "check"})

    with pytest.raises(RulesError, match="CAP_NET_ADMIN") as info:
        rules.apply(RuleOptions(queues=(0, 1)), runner=no_cap)
    assert "\n" not in str(info.value)

    def no_binary(argv, **kw):
        return subprocess.run(argv, env={"PATH": "/nonexistent"}, **kw)

    with pytest.raises(RulesError, match="iptables-save not found"):
        rules.show(runner=no_binary)
    assert "IMQD" not in save(topo)
