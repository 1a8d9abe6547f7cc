"""Live changes through the REST API while traffic flows, and persistence across restarts."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from imqd.config import load_config
from imqd.lab import ImqdInstance
from imqd.netns import Topology

from .queues import wire_packets

pytestmark = pytest.mark.netns

GOODPUT_FACTOR = 1448 / 1514  # TCP payload per charged byte with overhead 14


def test_patch_rate_under_load_then_disable_and_enable(topology: Topology) -> None:
    topo = topology
    config = {"overhead": 14, "classes": [
        {"name": "up", "direction": "egress", "rate": "10mbit", "limit": 5000, "match": {"oif": topo.wan_iface}}]}
    result: dict[str, Any] = {}
    with topo.iperf3_server(5201), ImqdInstance(topo, config, queues="0:1") as imqd:
        t = threading.Thread(target=lambda: result.update(topo.iperf3(0, seconds=8)))
        t.start()
        time.sleep(3.0)
        status, body = imqd.request("PATCH", "/classes/up", {"rate": "30mbit"})
        assert status == 200, body
        assert body["rate"] in ("30mbit", 30_000_000)
        t.join()
        stats = imqd.stats()
        assert stats["last_apply_seconds"] < 0.05, "a change reaches every worker within 50 ms"
        up = stats["classes"]["up"]
        assert up["drops"] == 0, "the change must not drop packets (limit is far above TCP's window)"

        status, body = imqd.request("PUT", "/enabled", {"enabled": False})
        assert status == 200 and body["enabled"] is False
        free = topo.iperf3(0, seconds=2)["bps"]
        status, body = imqd.request("PUT", "/enabled", {"enabled": True})
        assert status == 200 and body["enabled"] is True
        again = topo.iperf3(0, seconds=3, omit=1)["bps"]

    intervals = [i["sum"]["bits_per_second"] for i in result["json"]["intervals"]]
    before, after = intervals[1:3], intervals[4:]
    assert sum(before) / len(before) == pytest.approx(10e6 * GOODPUT_FACTOR, rel=0.1), intervals
    # The PATCH landed at ~3 s: from the second after it on, the new rate holds.
    assert sum(after) / len(after) == pytest.approx(30e6 * GOODPUT_FACTOR, rel=0.07), intervals
    assert free > 100e6, "with shaping off traffic passes unshaped"
    assert again == pytest.approx(30e6 * GOODPUT_FACTOR, rel=0.07), "re-enabled: shaped again"


def test_restart_keeps_every_class(topology: Topology, tmp_path: Path) -> None:
    topo = topology
    path = tmp_path / "state" / "imqd.yaml"
    path.parent.mkdir()
    assert not path.exists()
    with ImqdInstance(topo, None, config_path=path) as imqd:
        assert imqd.request("GET", "/classes") == (200, [])
        for body in ({"name": "down", "direction": "ingress", "rate": "50mbit"},
                     {"name": "down-web", "direction": "ingress", "parent": "down", "rate": "20mbit",
                      "ceil": "50mbit", "match": {"proto": "tcp", "sport": 443}},
                     {"name": "up", "rate": "10mbit", "default": True}):
            status, stored = imqd.request("POST", "/classes", body)
            assert status == 201, stored
        assert imqd.request("PATCH", "/classes/up", {"ceil": "20mbit"})[0] == 200
        assert imqd.request("POST", "/classes", {"name": "bad", "rate": "1mbit", "parent": "nope"})[0] == 422
        before = imqd.request("GET", "/classes")[1]
        assert oct(path.stat().st_mode & 0o777) == "0o600"
        os.kill(imqd.proc.pid, signal.SIGKILL)  # ip netns exec execs imqd: this is imqd itself
        imqd.proc.wait(10)
    assert [c.name for c in load_config(path).classes] == ["down", "down-web", "up"]
    with ImqdInstance(topo, None, config_path=path) as again:
        after = again.request("GET", "/classes")[1]
    assert after == before


def _queued(topo: Topology) -> dict[str, list[str]]:
    """The NFQUEUE rules in imqd's two chains, as iptables-save prints them."""
    out = topo.exec(topo.router_ns, ["iptables-save", "-t", "mangle"]).stdout
    return {chain: [line for line in out.splitlines() if line.startswith(f"-A {chain} ") and "NFQUEUE" in line]
            for chain in ("IMQD_INGRESS", "IMQD_EGRESS")}


def test_rules_follow_the_interfaces_the_classes_name(topology: Topology) -> None:
    """--apply-rules queues only what a class can take: one NFQUEUE pass per forwarded packet, not two."""
    topo = topology
    wan = topo.wan_iface
    config = {"overhead": 14, "classes": [
        {"name": "up", "direction": "egress", "rate": "20mbit", "match": {"oif": wan}}]}
    with topo.iperf3_server(5201), ImqdInstance(topo, config, queues="0") as imqd:
        rules = _queued(topo)
        assert rules["IMQD_INGRESS"] == [] and len(rules["IMQD_EGRESS"]) == 1, rules
        assert f"-o {wan} " in rules["IMQD_EGRESS"][0]
        before = wire_packets(imqd.stats()["workers"][0])  # a GSO super-packet counts as its segments
        bps = topo.iperf3(0, seconds=2, omit=1)["bps"]
        time.sleep(0.6)  # the worker's next stats report
        seen = wire_packets(imqd.stats()["workers"][0]) - before
        assert bps == pytest.approx(20e6 * GOODPUT_FACTOR, rel=0.05), "shaped as before"
        segments = bps * 3 / 8 / 1448
        assert seen < 1.5 * segments, f"each data segment crosses the queue once: {seen} for ~{segments:.0f}"

        status, body = imqd.request("POST", "/classes", {"name": "down", "direction": "ingress", "rate": "5mbit",
                                                         "match": {"iif": wan}})
        assert status in (200, 201), body
        rules = _queued(topo)
        assert len(rules["IMQD_INGRESS"]) == 1 and f"-i {wan} " in rules["IMQD_INGRESS"][0], rules
        down = topo.iperf3(0, seconds=2, omit=1, reverse=True)["bps"]
        assert down == pytest.approx(5e6 * GOODPUT_FACTOR, rel=0.05), "the new ingress class shapes at once"

        status, _ = imqd.request("DELETE", "/classes/up")
        assert status in (200, 204)
        assert _queued(topo)["IMQD_EGRESS"] == [], "no egress class left: nothing queued on egress"


_PATCHER = r"""
import http.client, json, sys, time
host, port = sys.argv[1].rsplit(":", 1)
names = sys.argv[2].split(",")
conn = http.client.HTTPConnection(host, int(port), timeout=10)
start, out = time.monotonic(), []
for j, name in enumerate(names):
    time.sleep(max(0.0, start + 0.2 * j - time.monotonic()))
    body = json.dumps({"rate": "2mbit"})
    conn.request("PATCH", "/classes/" + name, body, {"Content-Type": "application/json"})
    r = conn.getresponse()
    out.append([r.status, float(r.getheader("X-Imqd-Apply-Seconds") or -1)])
    r.read()
print(json.dumps({"answers": out, "seconds": time.monotonic() - start}))
"""


def test_changing_other_classes_leaves_a_download_alone(topology: Topology) -> None:
    """Issue 17: with 2,000 classes, a 20 Mbit/s download in a class of its own keeps >= 0.98 of its goodput
    while 30 other classes are changed live, one every 0.2 s, and loses no packet to them."""
    import json
    import sys

    topo = topology
    subs = [{"name": f"s{i}", "direction": "ingress", "parent": "subs", "rate": "1mbit",
             "match": {"dst": f"198.19.{i // 250}.{i % 250 + 1}/32"}} for i in range(1999)]
    config = {"overhead": 14, "classes": [
        {"name": "down", "direction": "ingress", "rate": "20mbit", "limit": 5000, "match": {"iif": topo.wan_iface}},
        {"name": "subs", "direction": "ingress", "rate": "4gbit"}, *subs]}
    result: dict[str, Any] = {}
    with topo.iperf3_server(5201), ImqdInstance(topo, config, queues="0:1") as imqd:
        t = threading.Thread(target=lambda: result.update(topo.iperf3(0, seconds=14, reverse=True, omit=1)))
        t.start()
        time.sleep(7.5)  # 1 s omitted, then intervals 0-5 without changes
        names = ",".join(f"s{i}" for i in range(50, 2000, 65))  # 30 classes spread over the tree: 1 -> 2 Mbit/s
        patch = topo.exec(topo.router_ns, [sys.executable, "-c", _PATCHER, imqd.api, names], check=False)
        t.join()
        down = imqd.stats()["classes"]["down"]
    assert patch.returncode == 0, patch.stderr
    answers = json.loads(patch.stdout)
    assert [a[0] for a in answers["answers"]] == [200] * 30, answers
    assert all(0 <= a[1] < 0.05 for a in answers["answers"]), "each change reached every worker within 50 ms"
    assert answers["seconds"] < 7.5, "one change every 0.2 s (the requests kept the pace)"
    intervals = [i["sum"]["bits_per_second"] for i in result["json"]["intervals"]]
    quiet, changing = intervals[1:6], intervals[7:12]  # changes from ~6.5 s to ~12.5 s of the run
    assert sum(quiet) / len(quiet) == pytest.approx(20e6 * GOODPUT_FACTOR, rel=0.05), intervals
    assert sum(changing) / len(changing) >= 0.98 * sum(quiet) / len(quiet), intervals
    assert down["drops"] == 0, "no packet of the download is dropped (its limit is above TCP's window)"
