"""Queue overflow: a flood at the generator's maximum rate into a small class.

The worker must survive with bounded memory; packets that do not fit are dropped explicitly and counted
(leaf tail drops by the worker, queue-full drops by the kernel, both per worker in /stats).  The quick
version runs in the normal suite; `pytest -m slow` runs the 60 s soak the reliability report quotes.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from bench.udpgen import generator_argv, parse_output
from imqd.lab import ImqdInstance

pytestmark = pytest.mark.netns


def rss_kib(topo: Any) -> int:
    """Total resident memory of imqd's processes in the router namespace."""
    out = topo.exec(topo.router_ns, ["ip", "netns", "pids", topo.router_ns], check=False).stdout
    total = 0
    for pid in out.split():
        try:
            cmd = open(f"/proc/{pid}/cmdline", "rb").read()
            if b"imqd" not in cmd and b"forkserver" not in cmd:
                continue
            for line in open(f"/proc/{pid}/status"):
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def flood(topo: Any, seconds: float) -> dict[str, Any]:
    config = {"classes": [{"name": "small", "direction": "egress", "rate": "1mbit", "limit": 1000,
                           "match": {"proto": "udp"}}]}
    srcs = list(topo.clients[0].addrs4)
    with ImqdInstance(topo, config, queues="0:1", extra_args=["--max-len", "2048"]) as imqd:
        time.sleep(0.5)
        rss_before = rss_kib(topo)
        _, argv = generator_argv(topo.server_addr4, 9, 18, seconds, sources=srcs)
        gen = topo.popen(topo.clients[0].ns, argv, stdout=__import__("subprocess").PIPE, text=True)
        peak = rss_before
        deadline = time.monotonic() + seconds + 30
        change: dict[str, Any] = {}
        while gen.poll() is None and time.monotonic() < deadline:
            time.sleep(1)
            peak = max(peak, rss_kib(topo))
            if not change and gen.poll() is None:  # mid-flood: a change must still reach every worker
                t = time.monotonic()
                change["status"], _ = imqd.request("PATCH", "/classes/small", {"rate": "2mbit"})
                change["seconds"] = time.monotonic() - t
                change["workers"] = imqd.stats()["workers"]
        sent = parse_output(gen.stdout.read())["sent"]
        time.sleep(1.2)
        stats = imqd.stats()
        ping = topo.ping(0, count=3, interval=0.2)
    return {"sent": sent, "stats": stats, "rss_before": rss_before, "rss_peak": peak, "ping": ping,
            "change": change}


def check(result: dict[str, Any]) -> None:
    workers = result["stats"]["workers"]
    assert all(w["alive"] and w["restarts"] == 0 and w["errors"] == 0 for w in workers), workers
    dropped = sum(w["drops"] + w["queue_dropped"] + w["user_dropped"] for w in workers)
    assert dropped > result["sent"] * 0.5, "a 1 mbit class cannot pass a flood: the rest must be dropped, counted"
    assert result["rss_peak"] - result["rss_before"] < 64 * 1024, result  # KiB: bounded memory
    assert result["ping"], "the router still forwards other traffic"
    change = result["change"]
    assert change["status"] == 200 and change["seconds"] < 5, change  # a flood must not starve the control pipe
    assert len({w["applied_version"] for w in change["workers"]}) == 1, change["workers"]


def test_flood_quick(topology_factory: Any) -> None:
    check(flood(topology_factory(extra_client_addrs=3), seconds=8))


@pytest.mark.slow
def test_flood_60s_soak(topology_factory: Any) -> None:
    result = flood(topology_factory(extra_client_addrs=3), seconds=60)
    check(result)
    print(f"flood 60 s: sent {result['sent']}, RSS {result['rss_before']} -> peak {result['rss_peak']} KiB")
