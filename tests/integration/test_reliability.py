"""Failure behaviour: the router keeps forwarding, held packets are released, bad packets get verdicts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

from imqd.lab import ImqdInstance
from imqd.netns import Topology

pytestmark = pytest.mark.netns

UDP_SINK = r"""
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
s.bind(("0.0.0.0", int(sys.argv[1])))
print("ready", flush=True)
s.settimeout(float(sys.argv[2]))
n = 0
try:
    while True:
        s.recv(65535)
        n += 1
except socket.timeout:
    pass
print(n, flush=True)
"""

UDP_SEND = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(int(sys.argv[3])):
    s.sendto(b"x" * int(sys.argv[4]), (sys.argv[1], int(sys.argv[2])))
"""


def imqd_pids(topo: Topology) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", topo.router_ns], capture_output=True, text=True).stdout
    pids = []
    for pid in out.split():
        try:
            cmd = open(f"/proc/{pid}/cmdline", "rb").read()
        except OSError:
            continue
        if b"imqd" in cmd or b"forkserver" in cmd:
            pids.append(int(pid))
    return pids


def test_transfer_survives_kill_9_of_every_imqd_process(topology: Topology) -> None:
    """Fail open: with --queue-bypass and no worker bound, packets pass; the TCP connection completes."""
    topo = topology
    config = {"overhead": 14, "classes": [
        {"name": "up", "direction": "egress", "rate": "20mbit", "match": {"oif": topo.wan_iface}}]}
    result: dict[str, Any] = {}
    with topo.iperf3_server(5201):
        imqd = ImqdInstance(topo, config, queues="0:1")
        imqd.start()
        try:
            t = threading.Thread(target=lambda: result.update(topo.iperf3(0, seconds=8)))
            t.start()
            time.sleep(2.5)
            pids = imqd_pids(topo)
            assert len(pids) >= 3, pids  # supervisor, fork server, two workers
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
            t.join()
        finally:
            imqd.stop()
    assert "bps" in result, "the transfer failed"
    intervals = [i["sum"]["bits_per_second"] for i in result["json"]["intervals"]]
    assert len(intervals) >= 8
    assert min(intervals[-3:]) > 50e6, f"after imqd died traffic must flow unshaped: {intervals}"


def test_sigterm_releases_every_held_packet(topology: Topology) -> None:
    topo = topology
    config = {"overhead": 14, "classes": [
        {"name": "slow", "direction": "egress", "rate": "1mbit", "limit": 5000, "match": {"proto": "udp"}}]}
    with ImqdInstance(topo, config, queues="0") as imqd:
        sink = topo.popen(topo.server_ns, [sys.executable, "-c", UDP_SINK, "9000", "3"], stdout=subprocess.PIPE,
                          text=True)
        assert sink.stdout.readline().strip() == "ready"
        topo.exec(topo.clients[0].ns, [sys.executable, "-c", UDP_SEND, topo.server_addr4, "9000", "400", "1000"])
        time.sleep(0.7)
        held = sum(w["held"] for w in imqd.stats()["workers"])
        assert held > 200, f"a 1 mbit class should be holding most of 400 kB: {held}"
        assert imqd.stop() == 0
        rules = topo.exec(topo.router_ns, ["iptables-save"]).stdout
        assert "NFQUEUE" not in rules and "IMQD" not in rules, "--apply-rules removes its rules at exit"
    received = int(sink.stdout.readline())
    assert received == 400, f"SIGTERM must accept every held packet: received {received} of 400"


CRAFT = r"""
from scapy.all import IP, IPv6, TCP, UDP, ICMP, Raw, IPv6ExtHdrRouting, IPv6ExtHdrHopByHop, IPv6ExtHdrFragment
from scapy.all import IPv6ExtHdrDestOpt, send, fragment, conf
conf.verb = 0
dst4, dst6 = "%s", "%s"
pkts = [
    IP(dst=dst4, proto=6) / Raw(b"\x00\x01"),                       # truncated TCP header
    IP(dst=dst4, proto=17) / Raw(b""),                              # UDP with no header at all
    IP(dst=dst4, proto=253) / Raw(b"\xff" * 30),                    # unknown protocol
    IP(dst=dst4, options=b"\x01" * 40, proto=6) / Raw(b"\x00" * 4),  # max IHL, truncated L4
] + fragment(IP(dst=dst4) / UDP(dport=9) / Raw(b"z" * 3000), fragsize=500)
pkts6 = [
    IPv6(dst=dst6, nh=6) / Raw(b"\x01"),                            # truncated TCP
    IPv6(dst=dst6, nh=59),                                          # no next header, zero length
    IPv6(dst=dst6) / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() / IPv6ExtHdrRouting() / IPv6ExtHdrDestOpt()
        / UDP(dport=9) / Raw(b"q" * 20),                            # long extension chain
    IPv6(dst=dst6) / IPv6ExtHdrFragment(offset=100, m=0, id=7) / Raw(b"f" * 16),  # non-first fragment
    IPv6(dst=dst6, nh=0) / Raw(b"\x3b\x20" + b"\x00" * 6),          # hop-by-hop claiming 264 bytes
]
for _ in range(%d):
    send(pkts)
    send(pkts6)
print(len(pkts) + len(pkts6))
"""


def test_crafted_malformed_packets_get_verdicts_and_no_worker_crashes(topology: Topology) -> None:
    topo = topology
    config = {"classes": [{"name": "all-in", "direction": "ingress", "rate": "10mbit", "default": True},
                          {"name": "all-out", "direction": "egress", "rate": "10mbit", "default": True}]}
    rounds = 20
    with ImqdInstance(topo, config, queues="0:1") as imqd:
        before = imqd.stats()["workers"]
        res = topo.exec(topo.clients[0].ns, [sys.executable, "-c",
                                             CRAFT % (topo.server_addr4, topo.server_addr6, rounds)], timeout=120)
        per_round = int(res.stdout.split()[-1])
        time.sleep(1.2)  # stats are pushed every 0.5 s
        after = imqd.stats()["workers"]
        assert topo.ping(0, count=3, interval=0.2), "the router still forwards"
    seen = sum(w["packets"] for w in after) - sum(w["packets"] for w in before)
    assert seen >= rounds * per_round * 0.8, (seen, rounds * per_round)
    assert all(w["restarts"] == 0 and w["alive"] for w in after), after
    assert all(w["errors"] == 0 for w in after), after
    assert sum(w["held"] for w in after) == 0
    assert all(w["verdicts"] == w["packets"] - w["held"] for w in after), after


@pytest.mark.skipif(not __import__("shutil").which("setpriv"), reason="needs setpriv (util-linux)")
def test_runs_with_only_cap_net_admin(topology: Topology) -> None:
    """imqd needs CAP_NET_ADMIN and nothing else: all other capabilities dropped, it binds, shapes, cleans up."""
    topo = topology
    config = {"overhead": 14, "classes": [
        {"name": "up", "direction": "egress", "rate": "5mbit", "match": {"oif": topo.wan_iface}}]}
    only = ["setpriv", "--bounding-set", "-all,+net_admin", "--inh-caps", "-all,+net_admin",
            "--ambient-caps", "-all,+net_admin", "--"]
    with topo.iperf3_server(5201), ImqdInstance(topo, config, queues="0", wrapper=only) as imqd:
        status = open(f"/proc/{imqd.proc.pid}/status").read()
        caps = {line.split(":")[0]: int(line.split()[1], 16) for line in status.splitlines()
                if line.startswith(("CapEff", "CapPrm", "CapBnd"))}
        assert caps == {"CapPrm": 1 << 12, "CapEff": 1 << 12, "CapBnd": 1 << 12}, caps
        bps = topo.iperf3(0, seconds=3, omit=1)["bps"]
        assert imqd.stop() == 0
    assert bps == pytest.approx(5e6 * 1448 / 1514, rel=0.08)
    rules = topo.exec(topo.router_ns, ["iptables-save"]).stdout
    assert "NFQUEUE" not in rules


@pytest.mark.parametrize("overflow", ["drop", "accept"])
def test_a_worker_that_stops_reading_drops_or_passes_what_overflows_and_counts_it(topology: Topology,
                                                                                    overflow: str) -> None:
    """--on-overflow: SIGSTOP the worker, send 60,000 datagrams through it.  What its kernel queue and socket
    cannot hold is dropped (counted by the kernel) or passed unshaped at once (counted by the worker from
    packet ids: the kernel counts nothing then).  Either way every datagram is accounted for."""
    topo = topology
    config = {"overhead": 14, "classes": [
        {"name": "up", "direction": "egress", "rate": "1gbit", "limit": 10, "match": {"proto": "udp"}}]}
    sent = 60_000
    with ImqdInstance(topo, config, queues="0", extra_args=["--on-overflow", overflow]) as imqd:
        before = imqd.stats()["workers"][0]
        assert before["on_overflow"] == overflow and before["overflow_status"] == overflow
        sink = topo.popen(topo.server_ns, [sys.executable, "-c", UDP_SINK, "9000", "2"], stdout=subprocess.PIPE,
                          text=True)
        assert sink.stdout.readline().strip() == "ready"
        os.kill(before["pid"], signal.SIGSTOP)
        try:
            topo.exec(topo.clients[0].ns, [sys.executable, "-c", UDP_SEND, topo.server_addr4, "9000", str(sent),
                                           "64"])
            passed = int(sink.stdout.readline())  # what reached the server while the worker slept
        finally:
            os.kill(before["pid"], signal.SIGCONT)
        time.sleep(1.5)  # the worker reads its backlog, then reports
        w = imqd.stats()["workers"][0]
    seen = w["packets"] - before["packets"]
    overflowed = w["queue_dropped"] + w["user_dropped"] + w["unshaped_overflow"]
    assert seen + overflowed >= sent and seen < sent, f"seen {seen}, overflowed {overflowed}: {w}"
    assert w["socket_overflows"] == w["user_dropped"] + w["unshaped_overflow"], w
    if overflow == "drop":
        assert passed == 0, "nothing passes a worker that does not read"
        assert w["unshaped_overflow"] == 0 and w["queue_dropped"] + w["user_dropped"] > 0, w
    else:
        # the queue is sized so the socket overflows first: every packet passed unshaped is counted
        assert w["queue_dropped"] == w["user_dropped"] == 0, w
        assert w["unshaped_overflow"] > 0.3 * sent and passed <= w["unshaped_overflow"], (passed, w)
        assert passed >= 0.95 * w["unshaped_overflow"], f"the sink missed some: {passed} of {w['unshaped_overflow']}"
