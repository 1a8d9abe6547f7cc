"""Address sets in the rules (imqd.address_sets): with classes that name addresses, packets no class can take
never cross the NFQUEUE -- the traffic of unshaped hosts, the ACKs of a shaped download -- and the sets follow
live changes of the classes."""

from __future__ import annotations

import time

import pytest

from imqd.lab import ImqdInstance
from imqd.netns import Topology

from .queues import queue_last_ids

pytestmark = pytest.mark.netns

GOODPUT_FACTOR = 1448 / 1514  # TCP payload per charged byte with overhead 14


def _sets(topo: Topology) -> dict[str, set[str]]:
    """imqd's ipsets in the router namespace and their members."""
    out: dict[str, set[str]] = {}
    for line in topo.exec(topo.router_ns, ["ipset", "save"]).stdout.splitlines():
        cmd, name, *rest = line.split()
        if not name.startswith("imqd-"):
            continue
        if cmd == "create":
            out[name] = set()
        elif cmd == "add":
            out[name].add(rest[0] if "/" in rest[0] else rest[0] + ("/128" if ":" in rest[0] else "/32"))
    return out


def _queued(topo: Topology) -> int:
    return queue_last_ids(topo).get(0, 0)


def _down(name: str, addr: str, rate: str) -> dict:
    return {"name": name, "direction": "ingress", "rate": rate, "match": {"dst": addr}}


def test_only_what_a_class_can_take_crosses_the_queue(topology_factory) -> None:
    topo = topology_factory(clients=2)
    c0, c1 = topo.clients[0].addr4, topo.clients[1].addr4
    config = {"overhead": 14, "classes": [_down("down0", c0, "20mbit")]}
    with topo.iperf3_server(5201), ImqdInstance(topo, config, queues="0") as imqd:
        assert _sets(topo) == {"imqd-q0-ingress-dst4": {f"{c0}/32"}, "imqd-q0-ingress-src4": set(),
                               "imqd-q0-ingress-dst6": set(), "imqd-q0-ingress-src6": set()}
        assert "queueing only packets to or from the classes' 1 prefixes" in imqd.log()

        # an unshaped host: not one packet queued, full speed
        before = _queued(topo)
        free = topo.iperf3(1, seconds=2, reverse=True)["bps"]
        assert _queued(topo) == before, "the other host's packets crossed the queue"
        assert free > 200e6

        # the shaped download: only its data is queued, its ACKs (to the server) are not
        stats0 = imqd.stats()
        down = topo.iperf3(0, seconds=3, omit=1, reverse=True)["bps"]
        time.sleep(0.6)  # the worker's next stats report
        stats1 = imqd.stats()
        assert down == pytest.approx(20e6 * GOODPUT_FACTOR, rel=0.05)
        seen = stats1["workers"][0]["packets"] - stats0["workers"][0]["packets"]
        classed = stats1["classes"]["down0"]["packets"] - stats0["classes"]["down0"]["packets"]
        assert classed > 300 and seen == classed, f"{seen - classed} packets no class takes were queued"

        # a class for the second host, live: shaped at once; removed: not queued any more
        status, body = imqd.request("POST", "/classes", _down("down1", c1, "5mbit"))
        assert status == 201, body
        assert _sets(topo)["imqd-q0-ingress-dst4"] == {f"{c0}/32", f"{c1}/32"}
        assert topo.iperf3(1, seconds=2, omit=1, reverse=True)["bps"] == pytest.approx(5e6 * GOODPUT_FACTOR,
                                                                                        rel=0.05)
        status, _ = imqd.request("DELETE", "/classes/down1")
        assert status in (200, 204)
        assert _sets(topo)["imqd-q0-ingress-dst4"] == {f"{c0}/32"}
        before = _queued(topo)
        assert topo.iperf3(1, seconds=2, reverse=True)["bps"] > 200e6
        assert _queued(topo) == before

        # a class that names no address: every packet of the direction again, the sets go
        status, body = imqd.request("POST", "/classes", {"name": "web", "direction": "ingress", "rate": "50mbit",
                                                         "match": {"proto": "tcp", "sport": 443}})
        assert status == 201, body
        assert _sets(topo) == {}
        assert "address sets do not apply: class 'web' names no src or dst address" in imqd.log()
    assert _sets(topo) == {}
    assert "IMQD" not in topo.exec(topo.router_ns, ["iptables-save"]).stdout


def test_no_address_sets_queues_every_packet_as_before(topology_factory) -> None:
    topo = topology_factory(clients=2)
    config = {"overhead": 14, "classes": [_down("down0", topo.clients[0].addr4, "20mbit")]}
    with topo.iperf3_server(5201), ImqdInstance(topo, config, queues="0", extra_args=["--no-address-sets"]):
        assert _sets(topo) == {}
        before = _queued(topo)
        topo.iperf3(1, seconds=1, reverse=True)
        assert _queued(topo) - before > 1000, "every forwarded packet is queued without the sets"
