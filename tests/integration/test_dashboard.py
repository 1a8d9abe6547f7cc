"""The dashboard in a real browser against imqd shaping iperf3 traffic in namespaces.

Headless chromium runs inside the router namespace (imqd's API is on its loopback): the page loads without
console errors, shows the configured classes, the busy class's live rate reaches its configured rate within
10 % within 5 s, an edit made on the page changes what the API reports (configured and measured), and a 422
appears next to its field.  The screenshot it takes is docs/dashboard.png, the picture in README and docs.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from imqd.lab import API_ADDR, ImqdInstance
from imqd.netns import Topology, tool_env

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from dashboard_server import browser_missing  # noqa: E402

pytestmark = [pytest.mark.netns, pytest.mark.skipif(bool(why := browser_missing()), reason=why or "")]

REPO = Path(__file__).resolve().parents[2]
SCREENSHOT = REPO / "docs" / "dashboard.png"
RATE = 20_000_000
NEW_RATE = 12_000_000


def test_dashboard_under_traffic(topology: Topology, tmp_path: Path) -> None:
    topo = topology
    config = {"overhead": 14, "classes": [
        {"name": "uplink", "direction": "egress", "rate": "100mbit"},
        {"name": "office", "direction": "egress", "parent": "uplink", "rate": f"{RATE // 1_000_000}mbit",
         "match": {"oif": topo.wan_iface, "proto": "tcp"}},
        {"name": "voip", "direction": "egress", "parent": "uplink", "rate": "5mbit", "ceil": "20mbit", "prio": 0,
         "match": {"proto": "udp", "dport": "10000-20000"}},
        {"name": "guests", "direction": "egress", "parent": "uplink", "rate": "10mbit", "ceil": "50mbit",
         "default": True},
        {"name": "downlink", "direction": "ingress", "rate": "100mbit"},
        # downloads to the client (here: the upload's ACKs), one sub-queue per host; uploads pass ingress unshaped
        {"name": "subscribers", "direction": "ingress", "parent": "downlink", "rate": "50mbit",
         "per_host": {"key": "dst", "rate": "10mbit"}, "match": {"dst": f"{topo.clients[0].addr4}/32"}},
    ]}
    shot = tmp_path / "dashboard.png"
    traffic: dict[str, Any] = {}
    with topo.iperf3_server(5201), ImqdInstance(topo, config, queues="0:1") as imqd:
        t = threading.Thread(target=lambda: traffic.update(topo.iperf3(0, seconds=28, parallel=2)))
        t.start()
        try:
            time.sleep(1.0)
            script = Path(__file__).with_name("dashboard_browse.py")
            res = topo.exec(topo.router_ns, [sys.executable, str(script), f"http://{API_ADDR}/", "office",
                                             str(RATE), f"{NEW_RATE // 1_000_000}mbit", str(shot)],
                            check=False, timeout=120, env={**tool_env(), "HOME": str(tmp_path)})
            assert res.returncode == 0, res.stderr[-3000:]
            seen = json.loads(res.stdout.strip().splitlines()[-1])
            status, body = imqd.request("GET", "/classes/office")
            assert status == 200 and body["rate"] == NEW_RATE, "the page's edit reached the API"
            measured = []
            deadline = time.monotonic() + 6
            while time.monotonic() < deadline:
                time.sleep(0.5)
                measured.append(imqd.stats()["classes"]["office"]["rate_bps"])
            status, body = imqd.request("GET", "/classes/office")
            assert body["ceil"] in (None, NEW_RATE), "the refused ceil changed nothing"
        finally:
            t.join()
    print(f"page: converged after {seen['converged_after']} s; rates {seen['rates'][::5]}; after the edit "
          f"{measured}; update {seen['update_ms']}; iperf3 {traffic.get('bps')}")
    assert seen["console_at_load"] == [], seen["console_at_load"]
    assert set(seen["rows"]) >= {"uplink", "office", "voip", "guests"}, "the classes from the config"
    assert seen["converged_after"] is not None and seen["converged_after"] <= 5.0, seen["rates"]
    assert "below rate" in seen["ceil_error"]
    assert abs(measured[-1] - NEW_RATE) <= 0.1 * NEW_RATE, measured
    assert seen["update_ms"]["maxUpdateMs"] <= 200
    SCREENSHOT.write_bytes(shot.read_bytes())  # the docs' picture, from this run
