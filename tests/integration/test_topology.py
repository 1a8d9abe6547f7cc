"""The namespace lab itself: connectivity, throughput, kernel HTB reference, NAT, and cleanup."""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess

import pytest

from imqd import netns
from imqd.netns import Topology, TopologyError, cleanup_stale, tool_env

BENCH4 = ipaddress.ip_network("198.18.0.0/15")
BENCH6 = ipaddress.ip_network("2001:2::/48")
IP = shutil.which("ip", path=tool_env()["PATH"]) or "ip"


def lab_namespaces(prefix: str) -> list[str]:
    out = subprocess.run([IP, "netns", "list"], capture_output=True, text=True, check=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(prefix)]


def test_names_and_addresses(topology_factory) -> None:
    topo = topology_factory(clients=3, extra_client_addrs=2)
    assert len(topo.client_ns) == 3 and len(set(topo.namespaces)) == 5
    assert all(ns.startswith(topo.prefix + "-") for ns in topo.namespaces)
    assert sorted(lab_namespaces(topo.prefix + "-")) == sorted(topo.namespaces)
    ifaces = [*topo.lan_ifaces, topo.wan_iface, *topo.client_ifaces, topo.server_iface]
    assert all(i.startswith(topo.prefix) and len(i) <= 15 for i in ifaces)
    addrs = [a for c in topo.clients for a in c.addrs4 + c.addrs6]
    addrs += [topo.server_addr4, topo.server_addr6, topo.router_wan_addr4, topo.router_wan_addr6]
    for a in addrs:
        ip = ipaddress.ip_address(a)
        assert ip in (BENCH4 if ip.version == 4 else BENCH6), a
    assert all(len(c.addrs4) == 3 and len(c.addrs6) == 3 for c in topo.clients)
    # the addresses really are configured where the topology says
    shown = topo.exec(topo.client_ns[2], ["ip", "-o", "addr", "show", "dev", topo.client_ifaces[2]]).stdout
    for a in topo.clients[2].addrs4 + topo.clients[2].addrs6:
        assert f" {a}/" in shown
    router = topo.exec(topo.router_ns, ["sysctl", "-n", "net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding",
                                        "net.ipv4.conf.all.rp_filter"]).stdout.split()
    assert router == ["1", "1", "0"]


def test_ping_client_to_server_v4_and_v6(topology_factory) -> None:
    topo = topology_factory(clients=2, extra_client_addrs=1)
    for i in range(2):
        rtts = topo.ping(i, count=3, interval=0.05)
        assert len(rtts) == 3 and all(0 < r < 100 for r in rtts)
        assert len(topo.ping(i, count=2, interval=0.05, v6=True)) == 2
    assert len(topo.ping(0, count=2, interval=0.05, source=topo.clients[0].addrs4[1])) == 2
    assert topo.ping(0, count=1, interval=0.05, target="198.19.0.99", deadline=1) == []
    cpu = max(os.sched_getaffinity(0))
    assert len(topo.ping(0, count=2, interval=0.05, cpu=cpu)) == 2, "ping pinned to a CPU"
    with pytest.raises(ValueError, match="cpu"):
        topo.ping(0, count=1, cpu=cpu + 1000)


def test_iperf3_plain_is_fast_and_server_sees_the_client(topology) -> None:
    with topology.iperf3_server(5201):
        res = topology.iperf3(0, 5201, seconds=2)
        assert res["bps"] > 1e9, res["bps"]
        assert res["server_saw"] == [topology.clients[0].addr4]
        assert isinstance(res["retransmits"], int)
        rev6 = topology.iperf3(0, 5201, seconds=1, reverse=True, v6=True)
        assert rev6["bps"] > 1e8 and rev6["server_saw"] == [topology.clients[0].addr6]


def test_iperf3_bind_extra_address_and_udp(topology_factory) -> None:
    topo = topology_factory(extra_client_addrs=2)
    extra = topo.clients[0].addrs4[2]
    with topo.iperf3_server(5202):
        res = topo.iperf3(0, 5202, seconds=1, bind=extra, parallel=2)
        assert res["server_saw"] == [extra]
        assert len(res["json"]["start"]["connected"]) == 2
        udp = topo.iperf3(0, 5202, seconds=1, udp=True, bitrate="20M")
        assert 15e6 < udp["bps"] < 25e6 and udp["retransmits"] is None and udp["lost_percent"] is not None


def test_kernel_htb_egress_reference_measures_its_rate(topology) -> None:
    topology.htb(topology.router_ns, topology.lan_ifaces[0], "5mbit")
    with topology.iperf3_server(5203):
        down = topology.iperf3(0, 5203, seconds=3, reverse=True, omit=1)["bps"]
        up = topology.iperf3(0, 5203, seconds=2)["bps"]  # upload does not leave through the shaped port
    assert 0.85 * 5e6 < down < 1.02 * 5e6, down
    assert up > 1e8, up
    topology.clear_tc(topology.router_ns, topology.lan_ifaces[0])
    assert "htb" not in topology.exec(topology.router_ns, ["tc", "qdisc", "show", "dev", topology.lan_ifaces[0]]).stdout


def test_kernel_htb_ingress_reference_via_ifb(topology) -> None:
    ifb = topology.ingress_htb(topology.wan_iface, 5_000_000)
    assert ifb.startswith(topology.prefix)
    with topology.iperf3_server(5204):
        down = topology.iperf3(0, 5204, seconds=3, reverse=True, omit=1)["bps"]
    assert 0.85 * 5e6 < down < 1.02 * 5e6, down
    topology.clear_tc(topology.router_ns, topology.wan_iface)
    links = topology.exec(topology.router_ns, ["ip", "-o", "link"]).stdout
    assert ifb not in links


def test_masquerade_server_sees_router_and_client_still_downloads(topology_factory) -> None:
    topo = topology_factory(masquerade=True)
    no_route = topo.exec(topo.server_ns, ["ip", "route", "get", topo.clients[0].addr4], check=False)
    assert no_route.returncode != 0  # the server cannot reach the client except through NAT
    with topo.iperf3_server(5205):
        down = topo.iperf3(0, 5205, seconds=1, reverse=True)
        assert down["server_saw"] == [topo.router_wan_addr4]
        assert down["bps"] > 1e8
        down6 = topo.iperf3(0, 5205, seconds=1, reverse=True, v6=True)
        assert down6["server_saw"] == [topo.router_wan_addr6]


def test_teardown_removes_namespaces_and_processes() -> None:
    with Topology(clients=2) as topo:
        prefix = topo.prefix
        assert len(lab_namespaces(prefix + "-")) == 4
        tracked = topo.popen(topo.server_ns, ["sleep", "300"])
        # a process started in the namespace by other means would keep it alive invisibly: it goes too
        untracked = subprocess.Popen([IP, "netns", "exec", topo.router_ns, "sleep", "300"], env=tool_env())
    assert lab_namespaces(prefix + "-") == []
    assert tracked.poll() is not None
    assert untracked.wait(timeout=5) is not None
    assert not os.path.exists(os.path.join(netns.OWNER_DIR, prefix))
    topo.close()  # idempotent
    with pytest.raises(TopologyError, match="closed"):
        topo.exec(topo.router_ns, ["true"])


def test_failed_setup_cleans_up_what_it_made(monkeypatch) -> None:
    def boom(self: Topology) -> None:
        raise RuntimeError("injected failure after the links were made")

    monkeypatch.setattr(Topology, "_masquerade", boom)
    topo = Topology(clients=2, masquerade=True)
    with pytest.raises(RuntimeError, match="injected"):
        topo.start()
    assert lab_namespaces(topo.prefix + "-") == []


def test_cleanup_stale_removes_orphans_only(topology) -> None:
    from pyroute2 import netns as pnetns

    orphan = netns.make_prefix()
    pnetns.create(f"{orphan}-r")
    dead = subprocess.Popen(["true"])
    dead.wait()
    with open(os.path.join(netns.OWNER_DIR, orphan), "w") as f:
        f.write(f"{dead.pid} 1\n")
    removed = cleanup_stale()
    assert f"{orphan}-r" in removed and lab_namespaces(orphan + "-") == []
    assert sorted(lab_namespaces(topology.prefix + "-")) == sorted(topology.namespaces)  # live lab untouched
    pnetns.create(f"{orphan}-x")
    assert cleanup_stale(orphan) == [f"{orphan}-x"]
    with pytest.raises(ValueError, match="prefix"):
        cleanup_stale("")


def test_bad_options_are_rejected_before_anything_is_made() -> None:
    for kwargs, field in [({"clients": 0}, "clients"), ({"extra_client_addrs": -1}, "extra_client_addrs"),
                          ({"prefix": "Bad-Name"}, "prefix"), ({"prefix": "abcdefghijkl"}, "prefix")]:
        with pytest.raises(ValueError, match=field):
            Topology(**kwargs)
